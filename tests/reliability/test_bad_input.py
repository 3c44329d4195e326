"""Scenario 7: bad input at every door, and garbage on the queue.

- Celery door: property-based malformed requests sent with `send_task("vip_bundle.book")` are
  refused with an `InvalidRequest` naming each bad field; nothing is stored.
- HTTP door: the same requests, and arbitrary bytes, posted to `/book-vip-bundle` answer 422
  with every bad field named; never a 5xx; nothing stored.
- The queue: garbage pushed on `vip-bundles` (raw bytes, a pickled task, undecodable bodies,
  unknown tasks, task messages of the wrong shape) is refused with an error in the log, and the
  worker keeps running: a valid bundle still finalizes afterwards.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer

from process_manager.bundle import Status
from tasks.celery_app import store as session_store
from tests.reliability.invariants import Report
from tests.reliability.stack import INTAKE, Stack, log_count

pytestmark = pytest.mark.slow

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
REQUIRED = [
    "customer_email",
    "number_of_tickets",
    "show_id",
    "passengers",
    "inbound_flight_id",
    "return_flight_id",
]
IDS = ["show_id", "inbound_flight_id", "return_flight_id", "vip_bundle_id"]

# --- malformed requests ---------------------------------------------------------------------------


def _not_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return True
    return False


scalars = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False))
containers = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers())
)
not_a_string = st.one_of(st.none(), scalars, containers)
BAD: dict[str, st.SearchStrategy[Any]] = {
    "customer_email": st.one_of(not_a_string, st.text(max_size=30).filter(lambda s: "@" not in s)),
    "number_of_tickets": st.one_of(
        st.integers(max_value=0),
        st.integers(min_value=21),
        st.floats(allow_nan=False),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
        containers,
    ),
    "passengers": st.one_of(
        st.just([]),
        st.lists(st.sampled_from(["", "   ", "\t\n"]), min_size=1, max_size=2),
        st.lists(st.integers(), min_size=1, max_size=2),
        st.none(),
        scalars,
        st.text(max_size=5),
    ),
    **{
        name: st.one_of(scalars, containers, st.text(max_size=40).filter(_not_uuid)) for name in IDS
    },
}


@st.composite
def malformed(draw: st.DrawFn) -> tuple[dict[str, Any], set[str]]:
    """A request with one to three bad fields, or one broken cross-field rule; and the
    fields its error must name."""
    body: dict[str, Any] = {
        "vip_bundle_id": str(draw(st.uuids())),
        "customer_email": "ann@example.com",
        "number_of_tickets": 2,
        "show_id": str(draw(st.uuids())),
        "passengers": ["Ann Lee", "Bob Lee"],
        "inbound_flight_id": str(draw(st.uuids())),
        "return_flight_id": str(draw(st.uuids())),
    }
    rule = draw(st.sampled_from(["fields", "fields", "fields", "same flights", "too many"]))
    if rule == "same flights":
        body["return_flight_id"] = body["inbound_flight_id"]
        return body, {"return_flight_id"}
    if rule == "too many":
        body["passengers"] = ["Ann Lee", "Bob Lee", "Cy Lee"]
        return body, {"passengers"}
    named = set()
    for name in draw(st.lists(st.sampled_from([*BAD, "extra"]), min_size=1, max_size=3)):
        if name == "extra":
            extra = draw(st.from_regex(r"\A[a-z][a-z_]{0,11}\Z").filter(lambda n: n not in body))
            body[extra] = draw(st.one_of(not_a_string, st.text(max_size=5)))
            named.add(extra)
        elif name in REQUIRED and draw(st.booleans()):
            body.pop(name, None)
            named.add(name)
        else:
            body[name] = draw(BAD[name])
            named.add(name)
    return body, named


def bundles_stored(st_: Stack) -> int:
    return sum(st_.store.count(status) for status in Status)


# --- the Celery door ------------------------------------------------------------------------------


def test_malformed_requests_to_the_celery_door_are_refused_naming_each_field(make_stack, record):
    stack = make_stack("bad-celery")
    worker = stack.start_worker("worker", concurrency=2)
    refused: list[str] = []

    def refuse(kwargs: Any = None, args: Any = None) -> str:
        result = stack.app.send_task("vip_bundle.book", args=args, kwargs=kwargs, queue=INTAKE)
        with pytest.raises(Exception) as caught:
            result.get(timeout=30)
        assert type(caught.value).__name__ == "InvalidRequest", caught.value
        refused.append(str(caught.value))
        return str(caught.value)

    @EXAMPLES
    @given(malformed())
    def named(case: tuple[dict[str, Any], set[str]]) -> None:
        body, fields = case
        message = refuse(kwargs=body)
        for field in fields:
            assert field in message, (field, message)
        if isinstance(body.get("vip_bundle_id"), str) and not _not_uuid(body["vip_bundle_id"]):
            assert stack.store.get(body["vip_bundle_id"]) is None

    @settings(EXAMPLES, max_examples=15)
    @given(st.dictionaries(st.text(max_size=10), st.none() | scalars))
    def anything(kwargs: dict[str, Any]) -> None:
        refuse(kwargs=kwargs)

    named()
    anything()
    refuse(args=[{"customer_email": "ann@example.com"}])  # positional: refused too
    stored_after_bad = bundles_stored(stack)

    valid = stack.book()
    statuses = stack.wait([valid], timeout=60)
    report = stack.check()
    record(
        "7-bad-celery",
        "Bad input: Celery door",
        report,
        faults=[
            f"{len(refused)} malformed requests to vip_bundle.book (hypothesis: 40 with 1-3 bad "
            "fields or a broken cross-field rule, 15 arbitrary JSON objects, 1 positional)",
            "then one valid request",
        ],
        bundles=1,
        refused=len(refused),
        stored_after_bad_requests=stored_after_bad,
        worker_refusals_logged=log_count(worker, "vip_bundle.book refused"),
    )

    assert stored_after_bad == 0
    assert statuses[valid] is Status.FINALIZED
    assert worker.process.poll() is None
    assert report.violations == [], str(report)


# --- the queue itself -----------------------------------------------------------------------------


def publish(stack: Stack, body: Any, task: str | None = "vip_bundle.book", **kw: Any) -> None:
    headers = {"task": task, "id": str(uuid.uuid4()), "lang": "py"} if task else {}
    with Connection(stack.redis_url) as conn:
        Producer(conn.default_channel).publish(
            body, exchange="vip-bundles", routing_key=INTAKE, headers=headers, **kw
        )


GarbageMaker = Callable[[Stack], None]
# Refused by Celery and kombu as they are: (what, how to put it on the queue, the log line).
REFUSED_BY_CELERY: list[tuple[str, GarbageMaker, str]] = [
    (
        "a pickled task message",
        lambda s: publish(s, {"customer_email": "x"}, serializer="pickle"),
        "Refusing to deserialize untrusted content of type pickle",
    ),
    (
        "raw bytes as application/octet-stream",
        lambda s: publish(s, b"\x80\x04\x95garbage", content_type="application/octet-stream"),
        "Refusing to deserialize untrusted content of type application/octet-stream",
    ),
    (
        "a body that is not JSON, labelled JSON",
        lambda s: publish(s, "not json", content_type="application/json", content_encoding="utf-8"),
        "Can't decode message body",
    ),
    (
        "an unknown task name",
        lambda s: publish(s, [[], {}, {}], task="vip_bundle.nope", serializer="json"),
        "Received unregistered task of type 'vip_bundle.nope'",
    ),
]
# Each of these stops a stock Celery 5.7 worker ("Unrecoverable error"): adapters/broker.py.
STOPS_A_STOCK_WORKER: list[tuple[str, GarbageMaker, str]] = [
    (
        "raw bytes pushed on the Redis list",
        lambda s: s.redis.lpush(INTAKE, b"\x00\xff garbage"),
        "not a message (JSONDecodeError",
    ),
    (
        "JSON on the list that is not an envelope",
        lambda s: s.redis.lpush(INTAKE, json.dumps({"not": "an envelope"})),
        "not a message (no properties.delivery_tag",
    ),
    (
        "a task body that is an object, not [args, kwargs, embed]",
        lambda s: publish(s, {"customer_email": "x"}, serializer="json"),
        "malformed task message: ValueError",
    ),
    (
        "a task body that is a number",
        lambda s: publish(s, 5, serializer="json"),
        "malformed task message: TypeError",
    ),
]


def garbage_then_a_valid_bundle(
    make_stack: Callable[..., Stack], name: str, garbage: list[tuple[str, GarbageMaker, str]]
) -> tuple[Stack, dict[str, bool], Status | None]:
    stack = make_stack(name)
    worker = stack.start_worker("worker", concurrency=1)
    for _, put, _ in garbage:
        put(stack)
    time.sleep(2)
    assert worker.process.poll() is None, f"the worker died: see {worker.logfile}"
    valid = stack.book()
    status = stack.wait([valid], timeout=60)[valid]
    logged = {what: log_count(worker, line) > 0 for what, _, line in garbage}
    assert worker.process.poll() is None, f"the worker died: see {worker.logfile}"
    return stack, logged, status


def check_garbage(
    stack: Stack, record: Callable[..., None], key: str, title: str, logged, status
) -> None:
    report = stack.check()
    record(
        key,
        f"Bad input: {title}",
        report,
        faults=[f"{len(logged)} entries on the vip-bundles queue: " + "; ".join(logged)],
        bundles=1,
        refusals_logged=sum(logged.values()),
        refused=logged,
    )
    assert all(logged.values()), logged
    assert status is Status.FINALIZED
    assert report.counts.bundles == 1
    assert report.violations == [], str(report)


def test_garbage_celery_refuses_leaves_the_worker_running(make_stack, record):
    stack, logged, status = garbage_then_a_valid_bundle(
        make_stack, "garbage-celery", REFUSED_BY_CELERY
    )
    check_garbage(
        stack, record, "7-garbage-celery", "garbage Celery refuses by itself", logged, status
    )


def test_garbage_that_stops_a_stock_worker_is_refused_too(make_stack, record):
    stack, logged, status = garbage_then_a_valid_bundle(
        make_stack, "garbage-hardened", STOPS_A_STOCK_WORKER
    )
    check_garbage(
        stack, record, "7-garbage-hardened", "garbage that stops a stock worker", logged, status
    )


# --- the HTTP door --------------------------------------------------------------------------------


def test_malformed_requests_to_the_http_door_answer_422_and_store_nothing(redis_url, record):
    from tests.e2e.api_server import api_server

    answers: list[int] = []
    before = sum(session_store().count(status) for status in Status)
    with api_server() as url, httpx.Client(base_url=url, timeout=30) as http:

        def post(content: bytes) -> dict[str, Any]:
            response = http.post(
                "/book-vip-bundle", content=content, headers={"content-type": "application/json"}
            )
            answers.append(response.status_code)
            assert response.status_code == 422, response.text
            errors: list[dict[str, str]] = response.json()["errors"]
            assert errors and all(e["field"] and e["message"] for e in errors)
            return {e["field"]: e["message"] for e in errors}

        @EXAMPLES
        @given(malformed())
        def named(case: tuple[dict[str, Any], set[str]]) -> None:
            body, fields = case
            found = " ".join(post(json.dumps(body).encode()))
            for field in fields:
                assert field in found, (field, found)

        @settings(EXAMPLES, max_examples=25)
        @given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
        def garbage(content: bytes) -> None:
            post(content)

        named()
        garbage()
        alive = http.get("/health").status_code
    after = sum(session_store().count(status) for status in Status)
    record(
        "7-bad-http",
        "Bad input: HTTP door",
        _empty_report(after - before),
        faults=[
            f"{len(answers)} bad POST /book-vip-bundle bodies (hypothesis: 40 malformed "
            "requests, 25 arbitrary bytes or text)"
        ],
        bundles=0,
        answered_422=answers.count(422),
        served_after=alive,
    )
    assert after == before
    assert alive == 200


def test_hostile_headers_and_bodies_never_get_a_500(redis_url, record):
    """Correlation-ID values of any length and character, bodies nested to any depth or over
    the size limit, unknown headers: each gets its `{"errors": [...]}` answer, never a 500;
    a control character (but tab) gets the HTTP parser's own 400 and never reaches the app."""
    from tests.e2e.api_server import api_server

    answers: list[int] = []
    parser_400s: list[str] = []
    before = sum(session_store().count(status) for status in Status)
    with api_server() as url, httpx.Client(base_url=url, timeout=30) as http:

        def post(
            content: bytes, headers: dict[str, Any] | None = None, parser_refuses: bool = False
        ) -> httpx.Response:
            try:
                json_type = {"Content-Type": "application/json"}
                response = http.post(
                    "/book-vip-bundle", content=content, headers={**json_type, **(headers or {})}
                )
            except httpx.LocalProtocolError:  # the client itself will not send that header
                assume(False)
            answers.append(response.status_code)
            assert response.status_code < 500, response.text
            if parser_refuses:  # uvicorn's own plain 400: nothing reached the app
                assert response.status_code == 400, response.text
                assert not response.headers["content-type"].startswith("application/json")
            else:
                assert response.json()["errors"], response.text
            return response

        correlation_ids = st.text(
            st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"),
            min_size=1,
            max_size=400,
        )

        @settings(EXAMPLES, max_examples=60)
        @given(correlation_ids)
        def correlation_id(value: str) -> None:
            # As bytes: httpx would encode a str header as ASCII only. The parser refuses
            # control characters but tab (C0 and DEL) with its own 400; the rest reaches the app.
            refused = any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value)
            response = post(b"{}", {"Correlation-ID": value.encode("latin-1")}, refused)
            if refused:
                parser_400s.append(value)
                return
            bad = len(value) > 128 or any(not 32 <= ord(c) <= 126 for c in value)
            fields = [e["field"] for e in response.json()["errors"]]
            if bad:
                assert response.status_code == 422 and fields == ["Correlation-ID"], value
            else:
                assert "Correlation-ID" not in fields

        @settings(EXAMPLES, max_examples=30)
        @given(st.integers(min_value=1, max_value=30_000), st.sampled_from(["[", '{"a":']))
        def nested(depth: int, opener: str) -> None:
            closer = "]" if opener == "[" else "}"
            body = opener * depth + "1" + closer * depth
            response = post(body.encode())
            size_ok = len(body) <= 64 * 1024
            assert response.status_code == (422 if size_ok else 413)

        @settings(EXAMPLES, max_examples=10)
        @given(st.integers(min_value=64 * 1024 + 1, max_value=4 * 1024 * 1024))
        def oversized(size: int) -> None:
            response = post(b" " * size)
            assert response.status_code == 413
            assert response.json()["errors"][0]["field"] == "body"

        @settings(EXAMPLES, max_examples=30)
        @given(
            st.dictionaries(
                st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"),
                st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200),
                max_size=5,
            )
        )
        def unknown_headers(headers: dict[str, str]) -> None:
            post(b"{}", headers)

        correlation_id()
        nested()
        oversized()
        unknown_headers()
        alive = http.get("/health").status_code
    after = sum(session_store().count(status) for status in Status)
    record(
        "7-bad-http-headers",
        "Bad input: HTTP headers, nesting and size",
        _empty_report(after - before),
        faults=[
            f"{len(answers)} hostile requests (hypothesis: 60 Correlation-IDs, 30 nested "
            "bodies, 10 oversized bodies, 30 sets of unknown headers)"
        ],
        bundles=0,
        answered_4xx=sum(1 for a in answers if 400 <= a < 500),
        parser_400=len(parser_400s),
        answered_5xx=sum(1 for a in answers if a >= 500),
        served_after=alive,
    )
    assert after == before
    assert alive == 200


def _empty_report(stored: int) -> Report:
    report = Report()
    report.counts.bundles = stored
    return report


# --- the HTTP door: cross-site, rebinding and forged proxy headers ------------------------------

REMOTE_ADDRESSES = st.sampled_from(["203.0.113.9", "198.51.100.23", "2001:db8::7", "192.0.2.1"])
LOOPBACK_ADDRESSES = st.sampled_from(["127.0.0.1", "127.0.0.2", "::1"])


def _forwarding(chain: list[str], kind: str) -> dict[str, str]:
    xff = ", ".join(chain)
    forwarded = ", ".join(f'for="[{a}]"' if ":" in a else f"for={a}" for a in chain)
    return {
        "xff": {"X-Forwarded-For": xff},
        "forwarded": {"Forwarded": forwarded},
        "both": {"X-Forwarded-For": ", ".join(reversed(chain)), "Forwarded": forwarded},
    }[kind]


def test_cross_site_requests_and_forged_proxy_headers_are_refused(redis_url, logdir, record):
    """Against `vip-bundles api` in its own process (no API_KEYS: loopback clients only; the
    test is its trusted proxy): bodies that are not JSON, Hosts it does not serve, other sites'
    Origins, and forwarding headers naming a remote client. Each is refused with its status in
    the `{"errors": [...]}` shape, never a 5xx, and books nothing."""
    from tests.e2e.api_server import start_door

    door = start_door(logdir, {"TRUSTED_PROXIES": "127.0.0.1"})
    answers: list[int] = []
    ids: list[str] = []
    before = sum(session_store().count(status) for status in Status)

    def post(http: httpx.Client, headers: dict[str, str], body: bytes | None = None) -> int:
        if body is None:
            bundle_id = str(uuid.uuid4())
            ids.append(bundle_id)
            body = json.dumps({**_valid_request(), "vip_bundle_id": bundle_id}).encode()
        try:
            response = http.post("/book-vip-bundle", content=body, headers=headers)
        except httpx.LocalProtocolError:  # the client itself will not send that header
            assume(False)
        answers.append(response.status_code)
        assert response.status_code < 500, response.text
        assert response.json()["errors"][0]["field"], response.text
        return response.status_code

    try:
        with httpx.Client(base_url=door.url, timeout=30) as http:
            json_type = {"Content-Type": "application/json"}

            @settings(EXAMPLES, max_examples=30)
            @given(
                st.sampled_from(
                    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
                )
                | st.from_regex(r"\A[a-z]{1,12}/[a-z0-9.+-]{1,20}(; ?charset=utf-8)?\Z").filter(
                    lambda t: t.split(";")[0] != "application/json"
                )
            )
            def content_type(value: str) -> None:
                assert post(http, {"Content-Type": value}) == 415

            @settings(EXAMPLES, max_examples=30)
            @given(
                st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}(:[0-9]{1,5})?\Z").filter(
                    lambda h: h.split(":")[0].rstrip(".") not in ("localhost", "127.0.0.1")
                )
            )
            def host(value: str) -> None:
                assert post(http, {**json_type, "Host": value}) == 400

            @settings(EXAMPLES, max_examples=30)
            @given(
                st.sampled_from(["http", "https"]),
                st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}\Z"),
                st.integers(min_value=1, max_value=65535),
            )
            def origin(scheme: str, name: str, port: int) -> None:
                assume((scheme, name, port) != ("http", "127.0.0.1", door.port))
                value = f"{scheme}://{name}:{port}"
                assert post(http, {**json_type, "Origin": value}) == 403

            @settings(EXAMPLES, max_examples=30)
            @given(
                st.lists(LOOPBACK_ADDRESSES | REMOTE_ADDRESSES, max_size=3),
                REMOTE_ADDRESSES,
                st.sampled_from(["xff", "forwarded", "both"]),
            )
            def forged(written: list[str], seen: str, kind: str) -> None:
                # Whatever the client wrote, the proxy appended the address it saw: remote.
                assert post(http, {**json_type, **_forwarding([*written, seen], kind)}) == 403

            content_type()
            host()
            origin()
            forged()
            alive = http.get("/health").status_code
    finally:
        door.stop()
    after = sum(session_store().count(status) for status in Status)
    stored = [i for i in ids if session_store().get(i) is not None]
    record(
        "7-bad-http-cross-site",
        "Bad input: cross-site, rebinding and forged proxy headers",
        _empty_report(after - before),
        faults=[
            f"{len(answers)} refused POST /book-vip-bundle to `vip-bundles api` (hypothesis: "
            "30 non-JSON content types, 30 foreign Hosts, 30 foreign Origins, 30 forged "
            "X-Forwarded-For / Forwarded chains naming a remote client)"
        ],
        bundles=0,
        answered_415=answers.count(415),
        answered_400=answers.count(400),
        answered_403=answers.count(403),
        answered_5xx=sum(1 for a in answers if a >= 500),
        booked_by_refused_requests=len(stored),
        served_after=alive,
    )
    assert stored == []
    assert after == before
    assert alive == 200


def _valid_request() -> dict[str, Any]:
    from tests.helpers import request

    return request()

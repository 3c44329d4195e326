"""One bundle, followed across every process: its trace, as an OTLP receiver gets it.

A stack of its own (a Redis database, the simulator, a prefork `celery worker`, `celery beat`
and `vip-bundles api`, each a process of its own) with the OTEL_* variables pointing at an
OTLP/HTTP receiver in this test process, and LOG_FORMAT=json. Bundles go in through the HTTP
door; the receiver's spans must make one tree per bundle, joined across processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_manager.bundle import Status
from process_manager.messages import example_request
from tests.e2e.api_server import start_door
from tests.e2e.traced_stack import (
    API_KEY,
    CALLER_TRACE,
    EMAIL,
    PASSENGERS,
    TRACE_URL,
    Stack,
    assert_joined,
    by_name,
    one,
    only_trace_naming,
    partner_calls,
    run_span,
    sim_saw,
    stream_contexts,
    trace_of,
    traced_stack,
)


@pytest.fixture(scope="module", params=["prefork", pytest.param("threads", marks=pytest.mark.slow)])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The quick run on prefork (tracing set up in each child after the fork); the slow run
    again on `-P threads` (set up once, in the worker's own process)."""
    with traced_stack(tmp_path_factory.mktemp("traced"), pool=request.param) as st:
        yield st


def test_a_finalized_bundle_is_one_trace_from_the_callers_request(stack: Stack):
    body = example_request(customer_email=EMAIL, passengers=PASSENGERS)
    caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
    bundle_id = stack.book(body, {"traceparent": caller})
    bundle = stack.wait(bundle_id, {Status.FINALIZED})
    assert trace_of(bundle) == CALLER_TRACE  # the caller's trace, continued
    steps = {"run/vip_bundle.book_show_tickets", "run/vip_bundle.book_flight"}
    spans = stack.bundle_trace(bundle, steps)
    spans = stack.receiver.wait_for(
        lambda s: (
            len(by_name([x for x in s if x.trace_id == CALLER_TRACE], "run/vip_bundle.book_flight"))
            == 2
        )
    )
    spans = stack.receiver.trace(CALLER_TRACE)
    assert_joined(spans, root_parent="00f067aa0ba902b7")

    request = one(spans, "POST /book-vip-bundle")
    assert request.kind == "server" and request.parent_id == "00f067aa0ba902b7"
    intake = one(spans, "vip_bundle.intake")
    assert intake.parent_id == request.span_id
    assert bundle.traceparent.split("-")[2] == intake.span_id  # stored on the bundle
    show = run_span(spans, "vip_bundle.book_show_tickets", intake)
    inbound = run_span(spans, "vip_bundle.book_flight", show, **{"vip_bundle.leg": "inbound"})
    back = run_span(spans, "vip_bundle.book_flight", inbound, **{"vip_bundle.leg": "return"})
    for step, partner, name in [
        (show, "shows", "BookShowTickets"),
        (inbound, "flights", "BookFlight"),
        (back, "flights", "BookFlight"),
    ]:
        assert step.attributes["vip_bundle.id"] == bundle_id
        assert step.attributes["vip_bundle.step"] == name
        assert step.attributes["vip_bundle.attempt"] == 1
        calls = partner_calls(spans, step)
        assert [c.attributes["vip_bundle.partner"] for c in calls] == [partner]
    assert back.attributes["vip_bundle.outcome"] == "FlightBooked_v1"
    assert {s.service for s in spans} == {"vip-bundles-api", "vip-bundles-worker"}
    # No span carries the customer's e-mail or names.
    text = json.dumps([s.attributes for s in spans])
    assert EMAIL not in text and not any(p in text for p in PASSENGERS)
    # The partner got the trace context; every event on the stream carries it.
    assert sim_saw(stack, bundle) == {CALLER_TRACE}
    contexts = stream_contexts(stack, bundle)
    assert len(contexts) == 5 and all(c.split("-")[1] == CALLER_TRACE for c in contexts)
    only_trace_naming(stack, bundle)


def test_a_rolled_back_bundle_goes_on_through_the_error_callback_and_the_undos(stack: Stack):
    body = example_request(customer_email=EMAIL, passengers=PASSENGERS)
    stack.sim.set_flight_seats(body["return_flight_id"], 0)
    bundle = stack.wait(stack.book(body), {Status.FAILED})
    undos = {
        "run/vip_bundle.compensation.refund_tickets",
        "run/vip_bundle.compensation.cancel_flight_tickets",
    }
    spans = stack.bundle_trace(bundle, undos)
    assert_joined(spans)

    intake = one(spans, "vip_bundle.intake")
    assert intake.parent_id == one(spans, "POST /book-vip-bundle").span_id
    show = run_span(spans, "vip_bundle.book_show_tickets", intake)
    inbound = run_span(spans, "vip_bundle.book_flight", show, **{"vip_bundle.leg": "inbound"})
    back = run_span(spans, "vip_bundle.book_flight", inbound, **{"vip_bundle.leg": "return"})
    errback = one(spans, "vip_bundle.on_step_failed")
    assert errback.parent_id == back.span_id
    assert errback.attributes["vip_bundle.outcome"] == "FlightBookingFailed_v1"
    manager = run_span(spans, "vip_bundle.process_manager.handle_event", errback)
    assert manager.attributes["vip_bundle.event"] == "FlightBookingFailed_v1"
    refund = run_span(spans, "vip_bundle.compensation.refund_tickets", manager)
    cancel = run_span(spans, "vip_bundle.compensation.cancel_flight_tickets", manager)
    assert cancel.attributes["vip_bundle.leg"] == "inbound"
    assert refund.attributes["vip_bundle.tickets"] == 2
    # Two tickets: a refund and a receipt's void each.
    partners = sorted(c.attributes["vip_bundle.partner"] for c in partner_calls(spans, refund))
    assert partners == ["payments", "payments", "receipts", "receipts"]
    assert len(partner_calls(spans, cancel)) == 2
    assert sim_saw(stack, bundle) == {trace_of(bundle)}
    contexts = stream_contexts(stack, bundle)
    assert contexts and all(c.split("-")[1] == trace_of(bundle) for c in contexts)
    only_trace_naming(stack, bundle)


def test_a_cancel_joins_the_bundles_trace_linked_to_the_request(stack: Stack):
    body = example_request(customer_email=EMAIL, passengers=PASSENGERS)
    bundle = stack.wait(stack.book(body), {Status.FINALIZED})
    with stack.client() as http:
        answer = http.post(f"/vip-bundles/{bundle.vip_bundle_id}/cancel", json={"reason": "ill"})
        assert answer.status_code == 202, answer.text
        bundle = stack.wait(bundle.vip_bundle_id, {Status.CANCELLED})
        # Where people look: the page and the CLI show the trace, linked.
        page = http.get(f"/vip-bundles/{bundle.vip_bundle_id}", headers={"Accept": "text/html"})
    trace_id = trace_of(bundle)
    assert TRACE_URL.format(trace_id=trace_id) in page.text
    undos = {
        "vip_bundle.cancel",
        "run/vip_bundle.compensation.refund_tickets",
        "run/vip_bundle.compensation.cancel_flight_tickets",
    }
    spans = stack.bundle_trace(bundle, undos)
    spans = stack.receiver.wait_for(
        lambda s: (
            len(
                by_name(
                    [x for x in s if x.trace_id == trace_id],
                    "run/vip_bundle.compensation.cancel_flight_tickets",
                )
            )
            == 2
        )
    )
    spans = stack.receiver.trace(trace_id)
    assert_joined(spans)
    intake = one(spans, "vip_bundle.intake")
    cancel = one(spans, "vip_bundle.cancel")
    assert cancel.parent_id == intake.span_id  # from the stored context
    # ... linked to the cancel request's own trace (the HTTP call had none: a new one).
    (link,) = cancel.links
    asking = [s for s in stack.receiver.spans if s.span_id == link[1]]
    assert asking and asking[0].name == "POST /vip-bundles/{vip_bundle_id}/cancel"
    assert asking[0].trace_id != trace_id
    take_up = one(spans, "vip_bundle.take_up")
    assert take_up.parent_id == cancel.span_id and not take_up.links
    run_span(spans, "vip_bundle.compensation.refund_tickets", take_up)
    for leg in ("inbound", "return"):
        run_span(
            spans,
            "vip_bundle.compensation.cancel_flight_tickets",
            take_up,
            **{"vip_bundle.leg": leg},
        )
    contexts = stream_contexts(stack, bundle)
    assert contexts[-1].split("-")[1] == trace_id  # VipBundleCancelled_v1
    only_trace_naming(stack, bundle)

    status = subprocess.run(
        [sys.executable, "-m", "vip_bundles", "status", bundle.vip_bundle_id],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"trace: {trace_id}" in status.stdout, status.stdout + status.stderr
    assert TRACE_URL.format(trace_id=trace_id) in status.stdout


def test_an_operators_resume_joins_the_bundles_trace_after_a_failed_step(stack: Stack):
    """The show step fails for a technical reason (503 on every try): the error callback notes
    it and nothing is sent until someone takes the bundle up. An operator's resume, a request
    of its own, continues the bundle's trace from its stored context."""
    show = "/dead-nation-api/ticket/booking"
    stack.sim.fault(show, status=503, times=int(stack.env.get("HTTP_RETRY_ATTEMPTS", "5")))
    bundle_id = stack.book(example_request(customer_email=EMAIL, passengers=PASSENGERS))
    deadline = time.monotonic() + 20
    while (b := stack.store.get(bundle_id)) is None or b.step_failures < 1:
        assert time.monotonic() < deadline, "the show step never failed"
        time.sleep(0.05)
    with stack.client() as http:
        assert http.post(f"/vip-bundles/{bundle_id}/resume").status_code == 202
    bundle = stack.wait(bundle_id, {Status.FINALIZED})
    trace_id = trace_of(bundle)
    stack.receiver.wait_for(
        lambda s: (
            len(by_name([x for x in s if x.trace_id == trace_id], "run/vip_bundle.book_flight"))
            == 2
        )
    )
    time.sleep(0.3)
    spans = stack.receiver.trace(trace_id)
    assert_joined(spans)
    intake = one(spans, "vip_bundle.intake")
    failed = one(spans, "run/vip_bundle.book_show_tickets", **{"vip_bundle.attempt": 1})
    assert failed.status == 2  # an error, with its partner calls (every try) inside it
    assert len(partner_calls(spans, failed)) == int(stack.env.get("HTTP_RETRY_ATTEMPTS", "5"))
    errback = one(spans, "vip_bundle.on_step_failed")
    assert errback.parent_id == failed.span_id
    assert errback.attributes["vip_bundle.outcome"] == "StepFailed"
    take_up = one(spans, "vip_bundle.take_up")
    assert take_up.parent_id == intake.span_id and take_up.attributes["vip_bundle.by"].startswith(
        "key-"
    )
    (link,) = take_up.links
    asking = [s for s in stack.receiver.spans if s.span_id == link[1]]
    assert asking and asking[0].name == "POST /vip-bundles/{vip_bundle_id}/resume"
    show_again = run_span(
        spans, "vip_bundle.book_show_tickets", take_up, **{"vip_bundle.attempt": 2}
    )
    run_span(spans, "vip_bundle.book_flight", show_again, **{"vip_bundle.leg": "inbound"})


def test_every_log_line_is_json_without_personal_data_or_secrets(stack: Stack):
    """After the bundles above (and a search by e-mail): the log lines of the worker, beat,
    the HTTP door and the simulator are JSON objects, and none shows an e-mail, a passenger's
    name or the API key."""
    with stack.client() as http:
        assert http.get("/vip-bundles", params={"q": EMAIL}).status_code == 200
    # The Celery door too: its task's arguments are the request. (A Celery caller's trace
    # context, in the message's headers as its instrumentation sends it, is continued.)
    body = example_request(customer_email=EMAIL, passengers=PASSENGERS)
    caller = "0af7651916cd43dd8448eb211c80319c"
    sent = stack.celery.send_task(
        "vip_bundle.book",
        kwargs=body,
        queue="vip-bundles",
        headers={"traceparent": f"00-{caller}-b7ad6b7169203331-01"},
    )
    bundle = stack.wait(sent.get(timeout=20)["vip_bundle_id"], {Status.FINALIZED})
    assert trace_of(bundle) == caller
    spans = stack.bundle_trace(bundle, {"run/vip_bundle.book", "vip_bundle.intake"})
    book = one(spans, "run/vip_bundle.book")
    assert book.parent_id == "b7ad6b7169203331"
    assert one(spans, "vip_bundle.intake").parent_id == book.span_id
    time.sleep(0.5)  # the access log line is written after the answer
    search = stack.receiver.wait_for(lambda spans: any(s.name == "GET /vip-bundles" for s in spans))
    (found,) = [s for s in search if s.name == "GET /vip-bundles"]
    assert found.attributes["http.url"] == "/vip-bundles?q=..."
    assert EMAIL not in json.dumps(found.attributes)
    logs = {p.name: p.read_text() for p in stack.logdir.glob("*.log")}
    assert {"traced.log", "beat.log", "simulator.log"} <= set(logs)
    assert any(name.startswith("api-") for name in logs)
    fields: dict[str, set[str]] = {}
    for name, text in logs.items():
        for secret in [EMAIL, *PASSENGERS, API_KEY, EMAIL.replace("@", "%40")]:
            assert secret not in text, f"{name} shows {secret!r}"
        lines = [line for line in text.splitlines() if line.strip()]
        assert lines, name
        for line in lines:
            record = json.loads(line)  # one JSON object a line, nothing else
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            fields.setdefault(name, set()).update(k for k, v in record.items() if v)
    # A step's lines name everything that ties them to their bundle, task and span.
    assert {"vip_bundle_id", "correlation_id", "task_name", "task_id", "trace_id", "span_id"} <= (
        fields["traced.log"]
    )
    door = next(v for k, v in fields.items() if k.startswith("api-"))
    assert {"trace_id", "span_id"} <= door


@pytest.mark.slow
def test_a_worker_killed_mid_step_leaves_a_trace_that_joins_up_after_redelivery(
    tmp_path: Path,
):
    """kill -9 while the return flight's call is at the partner: the step's message comes
    back (visibility timeout) to a new worker, whose run of it continues the same trace under
    the span that sent it; what the dead process had not sent is simply missing, and no span
    is left without its parent."""
    hold_ms, visibility_s = 3000, 5
    with traced_stack(tmp_path, VISIBILITY_TIMEOUT_S=str(visibility_s), HTTP_TIMEOUT_S="10") as st:
        # The second PUT (the return leg) is held at the partner.
        flights = "/transportation-api/flight-tickets"
        st.sim.fault(flights, status=None, times=1, methods=["PUT"])
        st.sim.fault(flights, status=None, delay_ms=hold_ms, times=1, methods=["PUT"])
        bundle_id = st.book(example_request(customer_email=EMAIL, passengers=PASSENGERS))
        booked_at = time.monotonic()
        deadline = time.monotonic() + 20
        while (b := st.store.get(bundle_id)) is None or not b.starts.get("BookFlight:return"):
            assert time.monotonic() < deadline, "the return leg never started"
            time.sleep(0.05)
        time.sleep(0.5)  # its call is at the partner; what ended before has been exported
        st.worker.kill()
        time.sleep(max(0.0, visibility_s + 1 - (time.monotonic() - booked_at)))
        st.start_worker("second")  # restores the unacked message on its first sweep
        bundle = st.wait(bundle_id, {Status.FINALIZED}, timeout=60)
        trace_id = trace_of(bundle)
        spans = st.receiver.wait_for(
            lambda s: any(
                x.name == "run/vip_bundle.book_flight"
                and x.attributes.get("vip_bundle.attempt") == 2
                for x in s
                if x.trace_id == trace_id
            )
        )
        time.sleep(0.3)
        spans = st.receiver.trace(trace_id)
        assert sim_saw(st, bundle) == {trace_id}  # both PUTs of the return leg too
    assert_joined(spans)
    intake = one(spans, "vip_bundle.intake")
    show = run_span(spans, "vip_bundle.book_show_tickets", intake)
    inbound = run_span(spans, "vip_bundle.book_flight", show, **{"vip_bundle.leg": "inbound"})
    # The killed run of the return leg never reached the receiver; its redelivery did, as a
    # child of the inbound leg's run, which sent it.
    back = run_span(spans, "vip_bundle.book_flight", inbound, **{"vip_bundle.leg": "return"})
    assert back.attributes["vip_bundle.attempt"] == 2
    assert back.attributes["vip_bundle.outcome"] == "FlightBooked_v1"


def test_the_text_format_shows_no_personal_data_either(stack: Stack, tmp_path: Path):
    """The door in the text format (the default): a booking and a search by e-mail leave
    neither the e-mail nor a name in its log (the access log drops query strings)."""
    door = start_door(tmp_path, {**stack.env, "LOG_FORMAT": "text"})
    try:
        with door.client(API_KEY) as http:
            body = example_request(customer_email=EMAIL, passengers=PASSENGERS)
            assert http.post("/book-vip-bundle", json=body).status_code == 201
            assert http.get("/vip-bundles", params={"q": EMAIL}).status_code == 200
            assert (
                http.post("/book-vip-bundle", json={**body, "number_of_tickets": 0}).status_code
                == 422
            )
    finally:
        door.stop()
    text = door.log.read_text()
    assert "GET /vip-bundles?q=... HTTP/1.1" in text  # the search was logged, its text hidden
    for secret in [EMAIL, *PASSENGERS, API_KEY, EMAIL.replace("@", "%40")]:
        assert secret not in text, f"the door's text log shows {secret!r}"

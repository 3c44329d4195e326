"""The HTTP door (intake-api.md, door 2) through a real uvicorn server, a real worker and Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from partner_simulator.server import SimulatorClient
from process_manager.bundle import FINAL, Status
from tasks.celery_app import store
from tests.e2e.api_server import api_server
from tests.helpers import Saga, request
from vip_bundles import local_stack

SETTLED = {s.value for s in (*FINAL, Status.COMPENSATION_FAILED)}


@pytest.fixture(scope="module")
def api(worker: local_stack.Worker) -> Iterator[httpx.Client]:
    with api_server() as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


def wait_settled(api: httpx.Client, bundle_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.get(f"/vip-bundles/{bundle_id}")
        if r.status_code == 200 and r.json()["status"] in SETTLED:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(
        f"bundle {bundle_id} did not settle: {api.get(f'/vip-bundles/{bundle_id}')}"
    )


def post(api: httpx.Client, body: Any, **kw: Any) -> httpx.Response:
    return api.post("/book-vip-bundle", json=body, **kw)


def test_post_books_a_bundle_that_finalizes(api: httpx.Client, saga: Saga):
    body = request()
    r = post(api, body, headers={"Correlation-ID": "order-42"})

    assert r.status_code == 201
    answer = r.json()
    assert set(answer) == {"vip_bundle_id", "booking_id"}
    assert r.headers["Correlation-ID"] == "order-42"
    bundle = wait_settled(api, answer["vip_bundle_id"])
    assert bundle["status"] == "finalized"
    assert bundle["booking_id"] == answer["booking_id"]
    # The caller's correlation id travels with every partner call of the bundle.
    stored = store().require(answer["vip_bundle_id"])
    assert stored.correlation_id == "order-42"
    partner_calls = saga.calls(stored, "/")
    assert partner_calls
    assert {c["headers"].get("correlation-id") for c in partner_calls} == {"order-42"}
    for field in ("customer_email", "number_of_tickets", "show_id", "passengers"):
        assert bundle[field] == body[field]
    assert len(bundle["ticket_ids"]) == 2
    assert [len(bundle["flight_tickets"][leg]) for leg in ("inbound", "return")] == [2, 2]
    assert bundle["failure"] is None
    assert bundle["compensations"] == {
        "refunded_ticket_ids": [],
        "cancelled_legs": [],
        "cancelled_flight_ticket_ids": [],
        "pending": [],
    }
    history = bundle["history"]
    assert [(h["event"], h["from"], h["to"]) for h in history] == [
        ("VipBundleInitialized_v1", None, "initialized"),
        ("BookingMade_v1", "initialized", "booking_made"),
        ("FlightBooked_v1", "booking_made", "inbound_booked"),
        ("FlightBooked_v1", "inbound_booked", "return_booked"),
        ("VipBundleFinalized_v1", "return_booked", "finalized"),
    ]
    assert all(h["at"] for h in history)
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)


def test_sold_out_return_flight_fails_and_shows_its_compensations(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    body = request()
    sim.set_flight_seats(body["return_flight_id"], 0)
    bundle_id = post(api, body).json()["vip_bundle_id"]

    bundle = wait_settled(api, bundle_id)
    assert bundle["status"] == "failed"
    done = bundle["compensations"]
    assert sorted(done["refunded_ticket_ids"]) == sorted(bundle["ticket_ids"])
    assert len(done["refunded_ticket_ids"]) == 2
    assert done["cancelled_legs"] == ["inbound"]
    assert sorted(done["cancelled_flight_ticket_ids"]) == sorted(
        bundle["flight_tickets"]["inbound"]
    )
    assert done["pending"] == []
    assert bundle["flight_tickets"]["return"] == []
    assert bundle["failure"]["step"] == "book_return_flight"
    assert bundle["failure"]["leg"] == "return"
    assert bundle["history"][-1]["to"] == "failed"


INVALID = {
    "missing field": (lambda b: b.pop("customer_email"), {"customer_email"}),
    "bad email": (lambda b: b.update(customer_email="ann-at-example"), {"customer_email"}),
    "zero tickets": (lambda b: b.update(number_of_tickets=0), {"number_of_tickets"}),
    "tickets as text": (lambda b: b.update(number_of_tickets="2"), {"number_of_tickets"}),
    "empty passengers": (lambda b: b.update(passengers=[]), {"passengers"}),
    "blank passenger": (lambda b: b.update(passengers=["Ann", " "]), {"passengers.1"}),
    "more passengers than tickets": (
        lambda b: b.update(number_of_tickets=1),
        {"passengers"},
    ),
    "unknown field": (lambda b: b.update(colour="red"), {"colour"}),
    "same flight both ways": (
        lambda b: b.update(return_flight_id=b["inbound_flight_id"]),
        {"return_flight_id"},
    ),
    "many at once": (
        lambda b: b.update(
            customer_email="nope", number_of_tickets=0, passengers=[], show_id="x", extra=1
        ),
        {"customer_email", "number_of_tickets", "passengers", "show_id", "extra"},
    ),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_request_is_refused_naming_every_bad_field(api: httpx.Client, case: str):
    change, fields = INVALID[case]
    body = request(vip_bundle_id=str(uuid.uuid4()))
    change(body)

    r = post(api, body)

    assert r.status_code == 422
    assert set(r.json()) == {"errors"}
    assert {e["field"] for e in r.json()["errors"]} == fields
    assert all(e["message"] for e in r.json()["errors"])
    assert store().get(body["vip_bundle_id"]) is None
    assert api.get(f"/vip-bundles/{body['vip_bundle_id']}").status_code == 404


@pytest.mark.parametrize(
    "raw",
    [b'{"customer_email": "ann@example.com",', b"not json", b"", b"[1, 2]", b'"text"', b"null"],
    ids=["truncated", "garbage", "empty", "array", "string", "null"],
)
def test_a_body_that_is_not_a_json_object_is_refused_naming_body(api: httpx.Client, raw: bytes):
    before = store().count(Status.INITIALIZED)
    r = api.post("/book-vip-bundle", content=raw, headers={"Content-Type": "application/json"})

    assert r.status_code == 422
    (only,) = r.json()["errors"]
    assert only["field"] == "body" and only["message"]
    assert store().count(Status.INITIALIZED) <= before  # nothing new stored


def test_the_same_bundle_id_twice_is_one_bundle(api: httpx.Client, saga: Saga):
    body = request(vip_bundle_id=str(uuid.uuid4()))
    first, second = post(api, body), post(api, body)

    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    bundle = wait_settled(api, body["vip_bundle_id"])
    assert bundle["status"] == "finalized"
    assert [h["event"] for h in bundle["history"]].count("VipBundleInitialized_v1") == 1
    assert saga.events(body["vip_bundle_id"]).count("VipBundleInitialized_v1") == 1
    assert len(saga.sim.flight_tickets(reference_id=body["vip_bundle_id"])) == 4

    other = post(api, {**body, "customer_email": "bob@example.com"})
    assert other.status_code == 422
    assert [e["field"] for e in other.json()["errors"]] == ["vip_bundle_id"]
    assert api.get(f"/vip-bundles/{body['vip_bundle_id']}").json()["customer_email"] == (
        "ann@example.com"
    )


def test_unknown_bundle_is_404_naming_the_id(api: httpx.Client):
    r = api.get(f"/vip-bundles/{uuid.uuid4()}")

    assert r.status_code == 404
    assert r.json() == {"errors": [{"field": "vip_bundle_id", "message": "unknown vip bundle"}]}


def test_no_error_answers_in_fastapis_own_shape(api: httpx.Client):
    for r in (
        api.get("/no-such-route"),
        api.delete("/book-vip-bundle"),
        api.get("/vip-bundles"),
        api.get("/vip-bundles", params={"status": "failed", "limit": "many"}),
    ):
        assert 400 <= r.status_code < 500
        assert set(r.json()) == {"errors"}, r.text
    assert "HTTPValidationError" not in api.get("/openapi.json").text


def test_list_by_status_pages_through_the_bundles(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    mine = []
    for _ in range(3):
        body = request()
        sim.set_show_seats(body["show_id"], 0)
        mine.append(post(api, body).json()["vip_bundle_id"])
    for bundle_id in mine:
        assert wait_settled(api, bundle_id)["status"] == "failed"

    everything = api.get("/vip-bundles", params={"status": "failed", "limit": 500}).json()
    assert everything["status"] == "failed"
    assert everything["total"] == len(everything["items"]) >= 3  # fewer than 500 in a test run
    ids = [b["vip_bundle_id"] for b in everything["items"]]
    assert set(mine) <= set(ids)
    assert all(b["status"] == "failed" for b in everything["items"])
    assert {"vip_bundle_id", "booking_id", "status", "failure", "updated_at"} <= set(
        everything["items"][0]
    )

    first = api.get("/vip-bundles", params={"status": "failed", "offset": 0, "limit": 2}).json()
    second = api.get("/vip-bundles", params={"status": "failed", "offset": 2, "limit": 2}).json()
    assert (first["offset"], first["limit"], second["offset"]) == (0, 2, 2)
    paged = [b["vip_bundle_id"] for b in first["items"] + second["items"]]
    assert paged == ids[:4]
    assert first["total"] == everything["total"]


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"status": "lost"}, {"status"}),
        ({}, {"status"}),
        ({"status": "failed", "limit": 0}, {"limit"}),
        ({"status": "failed", "limit": 501}, {"limit"}),
        ({"status": "failed", "offset": -1}, {"offset"}),
        ({"status": "done", "offset": -1, "limit": 1000}, {"status", "offset", "limit"}),
    ],
)
def test_list_refuses_bad_parameters_naming_each(
    api: httpx.Client, params: dict[str, Any], fields: set[str]
):
    r = api.get("/vip-bundles", params=params)

    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == fields


def test_health_checks_redis(api: httpx.Client):
    r = api.get("/health")

    assert r.status_code == 200
    assert r.json()["redis"] == "ok"

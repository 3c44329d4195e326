"""The partner GET lists (every record, the contract's fields) and the /_sim drift controls."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from partner_simulator.server import SimulatorClient

SHOWS = "/dead-nation-api/ticket/booking"
FLIGHTS = "/transportation-api/flight-tickets"
REFUNDS = "/payments-api/refunds"
VOID = "/receipts-api/void-receipt"
RECEIPTS = "/receipts-api/receipts"

TICKET_FIELDS = {
    "ticket_id",
    "flight_id",
    "reference_id",
    "passenger_name",
    "customer_email",
    "cancelled",
}
REFUND_FIELDS = {"payment_reference", "reason", "deduplication_id"}
RECEIPT_FIELDS = {"ticket_id", "voided", "void_reason"}


def put(http: httpx.Client, path: str, body: dict[str, Any], key: str) -> httpx.Response:
    return http.put(path, json=body, headers={"Idempotency-Key": body[key]})


def book_flight(http: httpx.Client, ref: str, passengers: list[str]) -> list[str]:
    body = {
        "customer_email": "ann@example.com",
        "flight_id": str(uuid.uuid4()),
        "passenger_names": passengers,
        "reference_id": ref,
        "idempotency_key": str(uuid.uuid4()),
    }
    response = put(http, FLIGHTS, body, "idempotency_key")
    assert response.status_code == 201
    ticket_ids: list[str] = response.json()["ticket_ids"]
    return ticket_ids


def book_show(http: httpx.Client, n: int) -> list[str]:
    key = str(uuid.uuid4())
    body = {
        "booking_id": key,
        "customer_address": "ann@example.com",
        "event_id": str(uuid.uuid4()),
        "number_of_tickets": n,
    }
    response = http.post(SHOWS, json=body, headers={"Idempotency-Key": key})
    assert response.status_code == 201
    ticket_ids: list[str] = response.json()["ticket_ids"]
    return ticket_ids


def refund(http: httpx.Client, ticket_id: str) -> None:
    body = {"payment_reference": ticket_id, "reason": "rollback", "deduplication_id": ticket_id}
    assert put(http, REFUNDS, body, "deduplication_id").status_code == 201


def void(http: httpx.Client, ticket_id: str) -> None:
    body = {"ticket_id": ticket_id, "reason": "rollback", "idempotent_id": ticket_id}
    assert put(http, VOID, body, "idempotent_id").status_code == 200


def test_plain_gets_list_every_record_with_the_contract_fields(http: httpx.Client) -> None:
    flights = book_flight(http, "bundle-1", ["Ann", "Bob"]) + book_flight(http, "bundle-2", ["Cy"])
    shows = book_show(http, 3)
    for t in shows[:2]:
        refund(http, t)
        void(http, t)

    tickets = http.get(FLIGHTS).json()
    refunds = http.get(REFUNDS).json()
    receipts = http.get(RECEIPTS).json()

    assert [t["ticket_id"] for t in tickets] == flights
    assert all(set(t) == TICKET_FIELDS for t in tickets)
    assert [r["payment_reference"] for r in refunds] == shows[:2]
    assert all(set(r) == REFUND_FIELDS for r in refunds)
    assert {r["ticket_id"]: r["voided"] for r in receipts} == {
        shows[0]: True,
        shows[1]: True,
        shows[2]: False,
    }
    assert all(set(r) == RECEIPT_FIELDS for r in receipts)


def test_courtesy_filters_narrow_each_list(http: httpx.Client) -> None:
    mine = book_flight(http, "bundle-1", ["Ann", "Bob"])
    book_flight(http, "bundle-2", ["Cy"])
    a, b = book_show(http, 2)
    refund(http, a)
    refund(http, b)

    by_ref = http.get(FLIGHTS, params={"reference_id": "bundle-1"}).json()
    assert [t["ticket_id"] for t in by_ref] == mine
    assert http.get(FLIGHTS, params={"reference_id": "nobody"}).json() == []
    assert [
        r["payment_reference"] for r in http.get(REFUNDS, params={"payment_reference": a}).json()
    ] == [a]
    assert http.get(REFUNDS, params={"payment_reference": "nobody"}).json() == []
    assert [r["ticket_id"] for r in http.get(RECEIPTS, params={"ticket_id": b}).json()] == [b]
    assert http.get(RECEIPTS, params={"ticket_id": "nobody"}).json() == []


def test_revive_uncancels_a_flight_ticket_and_takes_its_seat_again(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 2)
    body = {
        "customer_email": "ann@example.com",
        "flight_id": "fl-1",
        "passenger_names": ["Ann"],
        "reference_id": "bundle-1",
        "idempotency_key": "k1",
    }
    (ticket_id,) = put(http, FLIGHTS, body, "idempotency_key").json()["ticket_ids"]
    assert http.delete(f"{FLIGHTS}/{ticket_id}").status_code == 204
    assert sim.flight_seats("fl-1") == 2

    revived = sim.revive_flight_ticket(ticket_id)

    assert revived["ticket_id"] == ticket_id and revived["cancelled"] is False
    assert http.get(FLIGHTS).json()[0]["cancelled"] is False
    assert sim.flight_seats("fl-1") == 1
    assert sim.revive_flight_ticket(ticket_id)["cancelled"] is False  # idempotent
    assert sim.flight_seats("fl-1") == 1
    assert http.post(f"/_sim/flight-tickets/{uuid.uuid4()}/revive").status_code == 404


def test_forget_refunds_drops_every_refund_of_that_ticket(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    a, b = book_show(http, 2)
    refund(http, a)
    refund(http, b)

    assert sim.forget_refunds(a) == 1

    assert [r["payment_reference"] for r in http.get(REFUNDS).json()] == [b]
    assert http.get(REFUNDS, params={"payment_reference": a}).json() == []
    assert sim.forget_refunds(a) == 0


def test_unvoid_receipt_clears_the_void(http: httpx.Client, sim: SimulatorClient) -> None:
    (ticket_id,) = book_show(http, 1)
    void(http, ticket_id)

    receipt = sim.unvoid_receipt(ticket_id)

    assert receipt == {"ticket_id": ticket_id, "voided": False, "void_reason": None}
    assert http.get(RECEIPTS).json() == [receipt]
    assert http.post(f"/_sim/receipts/{uuid.uuid4()}/unvoid").status_code == 404


def test_drift_controls_leave_the_call_log_alone(http: httpx.Client, sim: SimulatorClient) -> None:
    (ticket_id,) = book_show(http, 1)
    before = sim.calls()

    sim.unvoid_receipt(ticket_id)
    sim.forget_refunds(ticket_id)

    assert sim.calls() == before

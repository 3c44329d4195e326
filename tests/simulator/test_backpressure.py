"""The contract's back-pressure controls over real HTTP: faults with `Retry-After` (429, 503;
delta-seconds and HTTP-date) and per-prefix quotas answering 429 + `Retry-After: 1`."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from partner_simulator.server import SimulatorClient

FLIGHTS_API = "/transportation-api"
FLIGHTS = "/transportation-api/flight-tickets"
REFUNDS = "/payments-api/refunds"


def flight_body(flight_id: str, key: str | None = None) -> dict[str, Any]:
    return {
        "customer_email": "ann@example.com",
        "flight_id": flight_id,
        "passenger_names": ["Ann", "Bob"],
        "reference_id": "b1",
        "idempotency_key": key or str(uuid.uuid4()),
    }


def book_flight(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return http.put(FLIGHTS, json=body, headers={"Idempotency-Key": body["idempotency_key"]})


def refund(http: httpx.Client) -> httpx.Response:
    key = str(uuid.uuid4())
    body = {"payment_reference": "t1", "reason": "rollback", "deduplication_id": key}
    return http.put(REFUNDS, json=body, headers={"Idempotency-Key": key})


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


# -- faults with Retry-After ---------------------------------------------------------------------


def test_429_fault_sends_retry_after_and_is_neither_processed_nor_cached(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 10)
    sim.fault(FLIGHTS_API, status=429, times=1, retry_after=2)
    body = flight_body("fl-1")

    throttled = book_flight(http, body)

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json() == {"error": "injected fault"}
    assert sim.flight_seats("fl-1") == 10
    assert sim.flight_tickets(flight_id="fl-1") == []
    # The same key, sent again, is processed: the 429 was not the key's first answer.
    assert book_flight(http, body).status_code == 201
    assert sim.flight_seats("fl-1") == 8
    first, second = sim.calls(FLIGHTS)
    assert (first["status"], first["fault"], first["retry_after"]) == (429, True, 2)
    assert first["throttled"] is False
    assert (second["status"], second["retry_after"]) == (201, None)


def test_503_fault_sends_retry_after_as_given(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.fault("/payments-api", status=503, times=1, retry_after=2.0)
    sim.fault("/payments-api", status=503, times=1, retry_after=1.5)
    sim.fault("/payments-api", status=503, times=1)

    answers = [refund(http) for _ in range(3)]

    assert [a.status_code for a in answers] == [503, 503, 503]
    assert answers[0].headers["Retry-After"] == "2"  # whole: delta-seconds, as RFC 9110 has it
    assert (
        answers[1].headers["Retry-After"] == "1.5"
    )  # a fraction as given: a lenient client's case
    assert "Retry-After" not in answers[2].headers
    assert [c["retry_after"] for c in sim.calls(REFUNDS)] == [2, 1.5, None]
    assert sim.refunds() == []


def test_retry_after_http_date_is_that_many_seconds_ahead_rounded_up(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.fault(FLIGHTS_API, status=429, times=1, retry_after=30, retry_after_http_date=True)

    before = datetime.now(UTC)
    response = book_flight(http, flight_body("fl-1"))

    assert response.status_code == 429
    header = response.headers["Retry-After"]
    assert header.endswith(" GMT")
    ahead = (parsedate_to_datetime(header) - before).total_seconds()
    assert 30 <= ahead <= 32  # whole seconds, rounded up: a client honouring it waits no less
    assert sim.calls(FLIGHTS)[-1]["retry_after"] == 30


def test_fault_rules_describe_their_retry_after(sim: SimulatorClient) -> None:
    rule = sim.add_fault(FLIGHTS_API, status=429, times=3, retry_after=2.0)

    assert rule["retry_after"] == 2 and rule["retry_after_http_date"] is False
    assert sim.faults() == [rule]
    assert sim.fault("/payments-api", status=503)["retry_after"] is None


# -- quotas --------------------------------------------------------------------------------------


def test_quota_refuses_the_call_past_n_in_a_second_without_booking(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 100)
    assert sim.set_quota(FLIGHTS_API, 3) == {"path_prefix": FLIGHTS_API, "per_second": 3}
    bodies = [flight_body("fl-1") for _ in range(4)]

    started = time.monotonic()
    answers = [book_flight(http, body) for body in bodies]
    assert time.monotonic() - started < 1.0  # all four within the window

    assert [a.status_code for a in answers] == [201, 201, 201, 429]
    assert answers[3].headers["Retry-After"] == "1"
    assert "error" in answers[3].json()
    assert sim.flight_seats("fl-1") == 94
    assert len(sim.flight_tickets(flight_id="fl-1")) == 6
    call = sim.calls(FLIGHTS)[-1]
    assert (call["status"], call["throttled"], call["retry_after"]) == (429, True, 1)
    assert call["fault"] is False

    # A second later the same key is accepted and booked: the 429 was not cached.
    sleep_until(started + 1.05)
    assert book_flight(http, bodies[3]).status_code == 201
    assert sim.flight_seats("fl-1") == 92


def test_refused_calls_do_not_consume_the_quota(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.set_quota(FLIGHTS_API, 2)

    started = time.monotonic()
    first = [book_flight(http, flight_body("fl-1")).status_code for _ in range(2)]
    sleep_until(started + 0.5)
    refused = [book_flight(http, flight_body("fl-1")).status_code for _ in range(3)]
    # The two accepted calls have left the sliding window; the three refused ones never entered.
    sleep_until(started + 1.1)
    later = [book_flight(http, flight_body("fl-1")).status_code for _ in range(3)]

    assert first == [201, 201]
    assert refused == [429, 429, 429]
    assert later == [201, 201, 429]


def test_quota_applies_under_its_prefix_only_and_several_coexist(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_quota(FLIGHTS_API, 1)
    sim.set_quota("/payments-api", 2)

    assert sim.quotas() == [
        {"path_prefix": FLIGHTS_API, "per_second": 1},
        {"path_prefix": "/payments-api", "per_second": 2},
    ]
    assert [book_flight(http, flight_body("fl-1")).status_code for _ in range(2)] == [201, 429]
    assert [refund(http).status_code for _ in range(3)] == [201, 201, 429]
    assert http.get("/receipts-api/receipts").status_code == 200


def test_a_throttled_call_takes_nothing_from_a_fault_rule(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_quota(FLIGHTS_API, 1)
    sim.fault(FLIGHTS_API, status=503, times=2)

    started = time.monotonic()
    statuses = [book_flight(http, flight_body("fl-1")).status_code for _ in range(2)]
    sleep_until(started + 1.05)
    statuses.append(book_flight(http, flight_body("fl-1")).status_code)

    # The quota counts the call a fault then fails (a partner's edge admitted it), but its 429
    # leaves the rule's budget alone: the second 503 comes a second later.
    assert statuses == [503, 429, 503]
    assert sim.faults() == []


def test_quota_of_zero_lifts_it_and_clear_quota_lifts_all(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_quota(FLIGHTS_API, 1)
    sim.set_quota("/payments-api", 1)
    assert [book_flight(http, flight_body("fl-1")).status_code for _ in range(2)] == [201, 429]

    sim.clear_quota(FLIGHTS_API)  # PUT per_second 0
    assert [book_flight(http, flight_body("fl-1")).status_code for _ in range(3)] == [201] * 3
    assert sim.quotas() == [{"path_prefix": "/payments-api", "per_second": 1}]

    sim.clear_quota()
    assert sim.quotas() == []
    assert [refund(http).status_code for _ in range(3)] == [201] * 3


def test_reset_forgets_quotas(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.set_quota(FLIGHTS_API, 1)
    assert [book_flight(http, flight_body("fl-1")).status_code for _ in range(2)] == [201, 429]

    sim.reset()

    assert sim.quotas() == []
    assert [book_flight(http, flight_body("fl-1")).status_code for _ in range(3)] == [201] * 3


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"path_prefix": FLIGHTS_API, "per_second": -1}, "per_second"),
        ({"per_second": 10}, "path_prefix"),
        ({"path_prefix": "", "per_second": 10}, "path_prefix"),
        ({"path_prefix": FLIGHTS_API}, "per_second"),
        ({"path_prefix": FLIGHTS_API, "per_second": "10"}, "per_second"),
        ({"path_prefix": FLIGHTS_API, "per_second": 2.5}, "per_second"),
    ],
)
def test_bad_quota_is_refused_naming_the_field(
    http: httpx.Client, sim: SimulatorClient, body: dict[str, Any], field: str
) -> None:
    response = http.put("/_sim/quota", json=body)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert sim.quotas() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"path_prefix": "/p", "status": 429, "retry_after": -1}, "retry_after"),
        ({"path_prefix": "/p", "status": 429, "retry_after": "2"}, "retry_after"),
        ({"path_prefix": "/p", "status": None, "retry_after": 2}, "retry_after"),
        (
            {"path_prefix": "/p", "status": 503, "retry_after_http_date": True},
            "retry_after_http_date",
        ),
    ],
)
def test_bad_retry_after_is_refused_naming_the_field(
    http: httpx.Client, sim: SimulatorClient, body: dict[str, Any], field: str
) -> None:
    response = http.post("/_sim/faults", json=body)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert sim.faults() == []

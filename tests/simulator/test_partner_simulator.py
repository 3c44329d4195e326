"""The partner simulator over real HTTP: contract statuses, seats, idempotency, faults, controls."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from partner_simulator.server import SimulatorClient, SimulatorServer, start_subprocess
from partner_simulator.state import SimulatorState

SHOWS = "/dead-nation-api/ticket/booking"
FLIGHTS = "/transportation-api/flight-tickets"
REFUNDS = "/payments-api/refunds"
VOID = "/receipts-api/void-receipt"
RECEIPTS = "/receipts-api/receipts"


def new_id() -> str:
    return str(uuid.uuid4())


def show_body(event_id: str, n: int = 2, key: str | None = None) -> dict[str, Any]:
    return {
        "booking_id": key or new_id(),
        "customer_address": "ann@example.com",
        "event_id": event_id,
        "number_of_tickets": n,
    }


def flight_body(
    flight_id: str, passengers: list[str] | None = None, key: str | None = None, ref: str = "b1"
) -> dict[str, Any]:
    return {
        "customer_email": "ann@example.com",
        "flight_id": flight_id,
        "passenger_names": ["Ann", "Bob"] if passengers is None else passengers,
        "reference_id": ref,
        "idempotency_key": key or new_id(),
    }


def refund_body(key: str | None = None) -> dict[str, Any]:
    return {"payment_reference": "t1", "reason": "rollback", "deduplication_id": key or new_id()}


def void_body(ticket_id: str = "t1", key: str | None = None) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "reason": "rollback", "idempotent_id": key or new_id()}


def send(
    http: httpx.Client, method: str, path: str, body: dict[str, Any], key: str
) -> httpx.Response:
    return http.request(method, path, json=body, headers={"Idempotency-Key": body[key]})


def book_show(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return send(http, "POST", SHOWS, body, "booking_id")


def book_flight(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return send(http, "PUT", FLIGHTS, body, "idempotency_key")


# -- happy paths and business failures -----------------------------------------------------------


def test_books_show_tickets_one_id_each_with_unvoided_receipts(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_show_seats("show-1", 10)
    body = show_body("show-1", n=3)

    response = book_show(http, body)

    assert response.status_code == 201
    answer = response.json()
    assert answer["booking_id"] == body["booking_id"]
    assert len(answer["ticket_ids"]) == 3
    assert all(uuid.UUID(t) for t in answer["ticket_ids"])
    assert sim.show_seats("show-1") == 7
    receipts = http.get(RECEIPTS).json()
    assert {r["ticket_id"] for r in receipts} == set(answer["ticket_ids"])
    assert all(r["voided"] is False and r["void_reason"] is None for r in receipts)


def test_show_with_too_few_seats_is_409_and_books_nothing(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_show_seats("show-1", 1)

    response = book_show(http, show_body("show-1", n=2))

    assert response.status_code == 409
    assert "error" in response.json()
    assert sim.show_seats("show-1") == 1
    assert sim.receipts() == []


def test_unknown_show_and_flight_start_with_plenty_of_seats(sim: SimulatorClient) -> None:
    assert sim.show_seats("never-set") >= 100_000
    assert sim.flight_seats("never-set") >= 100_000


def test_books_one_flight_ticket_per_passenger_and_lists_them(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 5)

    response = book_flight(http, flight_body("fl-1", ["Ann", "Bob"], ref="bundle-1"))
    book_flight(http, flight_body("fl-2", ["Cid"], ref="bundle-2"))

    assert response.status_code == 201
    ticket_ids = response.json()["ticket_ids"]
    assert len(ticket_ids) == 2
    assert sim.flight_seats("fl-1") == 3
    listed = http.get(FLIGHTS)
    assert listed.status_code == 200
    assert len(listed.json()) == 3
    mine = http.get(FLIGHTS, params={"reference_id": "bundle-1"}).json()
    assert mine == [
        {
            "ticket_id": ticket_ids[0],
            "flight_id": "fl-1",
            "reference_id": "bundle-1",
            "passenger_name": "Ann",
            "customer_email": "ann@example.com",
            "cancelled": False,
        },
        {
            "ticket_id": ticket_ids[1],
            "flight_id": "fl-1",
            "reference_id": "bundle-1",
            "passenger_name": "Bob",
            "customer_email": "ann@example.com",
            "cancelled": False,
        },
    ]
    assert [
        t["passenger_name"] for t in http.get(FLIGHTS, params={"flight_id": "fl-2"}).json()
    ] == ["Cid"]
    assert sim.flight_tickets(reference_id="bundle-1") == mine


def test_flight_with_too_few_seats_is_409_and_books_nothing(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 1)

    response = book_flight(http, flight_body("fl-1", ["Ann", "Bob"]))

    assert response.status_code == 409
    assert "error" in response.json()
    assert sim.flight_seats("fl-1") == 1
    assert sim.flight_tickets() == []


def test_cancel_returns_the_seat_and_a_second_cancel_is_404(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 2)
    ticket_id = book_flight(http, flight_body("fl-1", ["Ann"])).json()["ticket_ids"][0]
    assert sim.flight_seats("fl-1") == 1

    first = http.delete(f"{FLIGHTS}/{ticket_id}")
    second = http.delete(f"{FLIGHTS}/{ticket_id}")

    assert first.status_code == 204
    assert first.content == b""
    assert second.status_code == 404
    assert sim.flight_seats("fl-1") == 2
    assert sim.flight_tickets()[0]["cancelled"] is True
    assert http.delete(f"{FLIGHTS}/{new_id()}").status_code == 404


def test_refund_is_201_and_listed(http: httpx.Client, sim: SimulatorClient) -> None:
    body = refund_body()

    response = send(http, "PUT", REFUNDS, body, "deduplication_id")

    assert response.status_code == 201
    answer = response.json()
    assert answer["payment_reference"] == "t1"
    uuid.UUID(answer["refund_id"])
    assert http.get(REFUNDS).json() == [
        {
            "payment_reference": "t1",
            "reason": "rollback",
            "deduplication_id": body["deduplication_id"],
        }
    ]


def test_void_receipt_is_200_and_marks_the_receipt(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    ticket_id = book_show(http, show_body("show-1", n=1)).json()["ticket_ids"][0]

    response = send(http, "PUT", VOID, void_body(ticket_id), "idempotent_id")
    unknown = send(http, "PUT", VOID, void_body("never-issued"), "idempotent_id")

    assert response.status_code == 200
    assert response.json() == {"ticket_id": ticket_id, "voided": True}
    assert unknown.status_code == 200
    receipts = {r["ticket_id"]: r for r in http.get(RECEIPTS).json()}
    assert receipts[ticket_id] == {
        "ticket_id": ticket_id,
        "voided": True,
        "void_reason": "rollback",
    }
    assert receipts["never-issued"]["voided"] is True


# -- races and idempotency -------------------------------------------------------------------------


def test_two_threads_racing_for_the_last_seat_one_wins(
    server: SimulatorServer, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 1)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def race() -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            client.get("/_sim/health")  # connect before the barrier so both send together
            barrier.wait()
            statuses.append(book_flight(client, flight_body("fl-1", ["Ann"])).status_code)

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [201, 409]
    assert sim.flight_seats("fl-1") == 0


def test_many_concurrent_bookings_never_oversell(
    server: SimulatorServer, sim: SimulatorClient
) -> None:
    sim.set_show_seats("show-1", 5)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
            bodies = [show_body("show-1", n=1) for _ in range(30)]
            responses = await asyncio.gather(
                *(
                    client.post(SHOWS, json=b, headers={"Idempotency-Key": b["booking_id"]})
                    for b in bodies
                )
            )
            return [r.status_code for r in responses]

    statuses = asyncio.run(burst())

    assert statuses.count(201) == 5
    assert statuses.count(409) == 25
    assert sim.show_seats("show-1") == 0


def test_replay_returns_the_first_answer_and_books_nothing_more(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 10)
    sim.set_show_seats("show-1", 10)
    flight = flight_body("fl-1", ["Ann", "Bob"])
    show = show_body("show-1", n=2)
    refund = refund_body()

    first = [book_flight(http, flight), book_show(http, show)]
    first.append(send(http, "PUT", REFUNDS, refund, "deduplication_id"))
    again = [book_flight(http, flight), book_show(http, show)]
    again.append(send(http, "PUT", REFUNDS, refund, "deduplication_id"))

    assert [r.status_code for r in again] == [r.status_code for r in first] == [201, 201, 201]
    assert [r.json() for r in again] == [r.json() for r in first]
    assert sim.flight_seats("fl-1") == 8
    assert sim.show_seats("show-1") == 8
    assert len(sim.flight_tickets()) == 2
    assert len(sim.refunds()) == 1


def test_replayed_409_stays_409_after_seats_free_up(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 0)
    body = flight_body("fl-1", ["Ann"])
    assert book_flight(http, body).status_code == 409

    sim.set_flight_seats("fl-1", 5)

    assert book_flight(http, body).status_code == 409
    assert sim.flight_seats("fl-1") == 5


def test_same_key_on_another_endpoint_is_a_different_request(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    key = new_id()

    assert send(http, "PUT", REFUNDS, refund_body(key), "deduplication_id").status_code == 201
    assert send(http, "PUT", VOID, void_body(key=key), "idempotent_id").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", SHOWS, show_body("show-1")),
        ("PUT", FLIGHTS, flight_body("fl-1")),
        ("PUT", REFUNDS, refund_body()),
        ("PUT", VOID, void_body()),
    ],
)
def test_header_key_differing_from_body_key_is_400(
    http: httpx.Client, sim: SimulatorClient, method: str, path: str, body: dict[str, Any]
) -> None:
    response = http.request(method, path, json=body, headers={"Idempotency-Key": "other"})

    assert response.status_code == 400
    assert "error" in response.json()
    assert sim.flight_tickets() == [] and sim.refunds() == [] and sim.receipts() == []


def test_request_without_the_header_is_accepted(http: httpx.Client) -> None:
    assert http.put(FLIGHTS, json=flight_body("fl-1")).status_code == 201


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method", "body", "field"),
    [
        (SHOWS, "POST", {**show_body("s"), "number_of_tickets": 0}, "number_of_tickets"),
        (SHOWS, "POST", {**show_body("s"), "number_of_tickets": "2"}, "number_of_tickets"),
        (SHOWS, "POST", {k: v for k, v in show_body("s").items() if k != "event_id"}, "event_id"),
        (FLIGHTS, "PUT", {**flight_body("f"), "passenger_names": []}, "passenger_names"),
        (FLIGHTS, "PUT", {**flight_body("f"), "passenger_names": [1]}, "passenger_names"),
        (
            FLIGHTS,
            "PUT",
            {k: v for k, v in flight_body("f").items() if k != "idempotency_key"},
            "idempotency_key",
        ),
        (REFUNDS, "PUT", {**refund_body(), "reason": None}, "reason"),
        (VOID, "PUT", {**void_body(), "ticket_id": 7}, "ticket_id"),
        (VOID, "PUT", ["not", "an", "object"], "body"),
    ],
)
def test_invalid_body_is_400_naming_the_field(
    http: httpx.Client, path: str, method: str, body: Any, field: str
) -> None:
    response = http.request(method, path, json=body)

    assert response.status_code == 400
    assert response.json()["field"] == field


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(SHOWS, content=b"{nope", headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert response.json()["field"] == "body"


def test_extra_fields_are_ignored(http: httpx.Client) -> None:
    assert book_show(http, {**show_body("show-1"), "vip": True}).status_code == 201


# -- faults and latency ----------------------------------------------------------------------------


def test_fault_fails_the_next_n_matching_requests_without_effect_or_caching(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.fault("/payments-api", status=503, times=2)
    body = refund_body()

    statuses = [send(http, "PUT", REFUNDS, body, "deduplication_id").status_code for _ in range(3)]

    assert statuses == [503, 503, 201]
    assert len(sim.refunds()) == 1
    assert [c["fault"] for c in sim.calls(REFUNDS)] == [True, True, False]
    assert send(http, "PUT", VOID, void_body(), "idempotent_id").status_code == 200


def test_faulted_body_is_the_injected_error(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.fault("/dead-nation-api", status=500)

    response = book_show(http, show_body("show-1"))

    assert response.status_code == 500
    assert response.json() == {"error": "injected fault"}
    assert sim.receipts() == []


def test_delay_only_fault_answers_normally_after_the_delay(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.fault("/transportation-api", status=None, times=1, delay_ms=300)

    started = time.monotonic()
    response = book_flight(http, flight_body("fl-1"))
    elapsed = time.monotonic() - started

    assert response.status_code == 201
    assert elapsed >= 0.3
    call = sim.calls(FLIGHTS)[-1]
    assert call["delay_ms"] == 300
    assert call["fault"] is False


def test_fault_with_status_and_delay_fails_after_the_delay(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.fault("/payments-api", status=504, times=1, delay_ms=200)

    started = time.monotonic()
    response = send(http, "PUT", REFUNDS, refund_body(), "deduplication_id")

    assert response.status_code == 504
    assert time.monotonic() - started >= 0.2


def test_fault_limited_to_methods_spares_others(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.fault("/transportation-api", status=503, times=1, methods=["DELETE"])

    assert book_flight(http, flight_body("fl-1")).status_code == 201
    assert http.get(FLIGHTS).status_code == 200
    assert http.delete(f"{FLIGHTS}/{new_id()}").status_code == 503


def test_rate_fault_is_seeded_and_unlimited_by_default(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    def run() -> list[int]:
        sim.clear_faults()
        sim.fault("/payments-api", status=503, rate=0.5, seed=7)
        return [
            send(http, "PUT", REFUNDS, refund_body(), "deduplication_id").status_code
            for _ in range(40)
        ]

    first, second = run(), run()

    assert first == second
    assert 5 < first.count(503) < 35
    assert len(sim.refunds()) == first.count(201) * 2


def test_first_matching_rule_with_budget_applies(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.fault("/payments-api/refunds", status=500, times=1)
    sim.fault("/payments-api", status=503, times=1)

    statuses = [send(http, "PUT", REFUNDS, refund_body(), "deduplication_id").status_code]
    statuses += [send(http, "PUT", REFUNDS, refund_body(), "deduplication_id").status_code]
    statuses += [send(http, "PUT", REFUNDS, refund_body(), "deduplication_id").status_code]

    assert statuses == [500, 503, 201]


def test_clear_faults_stops_injection(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.fault("/", status=503, times=100)

    sim.clear_faults()

    assert book_show(http, show_body("show-1")).status_code == 201


def test_global_latency_delays_partner_calls_only(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.set_latency(200)

    started = time.monotonic()
    assert http.get(REFUNDS).status_code == 200
    partner_elapsed = time.monotonic() - started
    started = time.monotonic()
    sim.health()
    control_elapsed = time.monotonic() - started

    assert partner_elapsed >= 0.2
    assert control_elapsed < 0.2
    assert sim.calls(REFUNDS)[-1]["delay_ms"] == 200


def test_latency_jitter_spreads_each_call_around_the_delay(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_latency(40, jitter_ms=30)

    for _ in range(12):
        assert http.get(REFUNDS).status_code == 200

    assert sim.latency() == {"delay_ms": 40, "jitter_ms": 30}
    delays = [c["delay_ms"] for c in sim.calls(REFUNDS)]
    assert all(10 <= d <= 70 for d in delays)
    assert len(set(delays)) > 1  # drawn per call, not once


def test_jitter_never_makes_a_negative_delay(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.set_latency(0, jitter_ms=20)

    for _ in range(8):
        assert http.get(REFUNDS).status_code == 200

    assert all(0 <= c["delay_ms"] <= 20 for c in sim.calls(REFUNDS))


def test_latency_without_jitter_is_constant_and_reset_clears_it(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_latency(5, jitter_ms=3)
    sim.set_latency(5)  # jitter_ms defaults to 0
    http.get(REFUNDS)
    assert sim.calls(REFUNDS)[-1]["delay_ms"] == 5

    sim.reset()

    assert sim.latency() == {"delay_ms": 0, "jitter_ms": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"delay_ms": 10, "jitter_ms": -1}, "jitter_ms"),
        ({"delay_ms": 1, "jitter_ms": "5"}, "jitter_ms"),
    ],
)
def test_bad_latency_is_refused_naming_the_field(
    http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = http.put("/_sim/latency", json=body)

    assert response.status_code == 400
    assert response.json()["field"] == field


def test_simulator_process_takes_latency_and_jitter_flags() -> None:
    proc, url = start_subprocess(latency_ms=7, jitter_ms=3)
    try:
        with SimulatorClient(url) as client:
            assert client.latency() == {"delay_ms": 7, "jitter_ms": 3}
    finally:
        proc.terminate()
        proc.wait()


# -- controls --------------------------------------------------------------------------------------


def test_reset_forgets_everything(http: httpx.Client, sim: SimulatorClient) -> None:
    sim.set_flight_seats("fl-1", 3)
    flight = flight_body("fl-1", ["Ann"])
    book_flight(http, flight)
    send(http, "PUT", REFUNDS, refund_body(), "deduplication_id")
    book_show(http, show_body("show-1"))
    sim.fault("/payments-api", status=503, times=5)
    sim.set_latency(50)

    sim.reset()

    assert sim.flight_tickets() == [] and sim.refunds() == [] and sim.receipts() == []
    assert sim.calls() == []
    assert sim.flight_seats("fl-1") >= 100_000
    assert send(http, "PUT", REFUNDS, refund_body(), "deduplication_id").status_code == 201
    assert book_flight(http, flight).status_code == 201  # key forgotten: books again
    assert len(sim.flight_tickets()) == 1
    assert sim.calls()[-1]["delay_ms"] == 0


def test_call_log_records_partner_requests_in_order(
    http: httpx.Client, sim: SimulatorClient
) -> None:
    body = show_body("show-1", n=1)
    book_show(http, body)
    mark = sim.calls()[-1]["seq"]
    http.put(
        FLIGHTS,
        json=flight_body("fl-1", key="k-1"),
        headers={"Idempotency-Key": "k-1", "Correlation-ID": "corr-1"},
    )
    http.delete(f"{FLIGHTS}/{new_id()}")
    http.get("/no-such-partner")
    sim.set_flight_seats("fl-1", 3)  # controls are not logged

    calls = sim.calls()

    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("POST", SHOWS, 201),
        ("PUT", FLIGHTS, 201),
        ("DELETE", calls[2]["path"], 404),
        ("GET", "/no-such-partner", 404),
    ]
    first, flight = calls[0], calls[1]
    assert first["body"] == body
    assert first["headers"]["idempotency-key"] == body["booking_id"]
    assert flight["headers"]["correlation-id"] == "corr-1"
    assert flight["delay_ms"] == 0 and flight["fault"] is False
    assert isinstance(flight["at"], float) and abs(flight["at"] - time.time()) < 60
    assert [c["seq"] for c in calls] == list(range(mark, mark + 4))
    assert [c["seq"] for c in sim.calls(since=mark)] == [mark + 1, mark + 2, mark + 3]
    assert [c["method"] for c in sim.calls("/transportation-api")] == ["PUT", "DELETE"]


def test_call_log_keeps_only_the_newest_max_calls() -> None:
    state = SimulatorState(max_calls=3)
    for i in range(5):
        state.record_call(path=f"/p{i}")

    assert [c["seq"] for c in state.calls_since(0, None)] == [3, 4, 5]
    assert [c["seq"] for c in state.calls_since(4, None)] == [5]
    assert state.calls_since(5, None) == []


def test_seat_controls_validate_and_echo(http: httpx.Client, sim: SimulatorClient) -> None:
    response = http.put("/_sim/shows/show-9", json={"seats": 4})

    assert response.status_code == 200
    assert response.json()["seats"] == 4
    assert http.get("/_sim/shows/show-9").json()["seats"] == 4
    assert http.put("/_sim/flights/fl-9", json={"seats": -1}).json()["field"] == "seats"
    assert http.get("/_sim/health").json() == {"ok": True}


def test_start_subprocess_serves_until_terminated() -> None:
    proc, url = start_subprocess()
    try:
        with SimulatorClient(url) as client:
            assert client.health()
            with httpx.Client(base_url=url) as http:
                assert book_show(http, show_body("show-1")).status_code == 201
            assert len(client.calls(SHOWS)) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_timed_out_request_still_takes_effect_once_and_retry_replays(
    server: SimulatorServer, http: httpx.Client, sim: SimulatorClient
) -> None:
    sim.set_flight_seats("fl-1", 5)
    sim.fault("/transportation-api", status=None, times=1, delay_ms=400)
    body = flight_body("fl-1", ["Ann"])

    with (
        httpx.Client(base_url=server.url, timeout=0.1) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        book_flight(impatient, body)
    retry = book_flight(http, body)
    time.sleep(0.5)  # let the delayed first request finish on the server

    assert retry.status_code == 201
    assert sim.flight_seats("fl-1") == 4
    assert [t["ticket_id"] for t in sim.flight_tickets()] == retry.json()["ticket_ids"]

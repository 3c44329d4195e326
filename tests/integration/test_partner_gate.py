"""The fleet's partner gate on a real Redis: Retry-After, the circuit breaker, the quota, and
the partner client against the simulator answering 429 / 503 with Retry-After."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from redis import Redis

from adapters.partner_gate import (
    BreakerPolicy,
    PartnerGate,
    parse_rate_limits,
    parse_retry_after,
)
from adapters.partners import PartnerBusy, Partners
from adapters.settings import Settings
from partner_simulator.server import SimulatorClient, SimulatorServer

FLIGHTS = "transportation-api"


@pytest.fixture
def gate(redis_url: str) -> Iterator[PartnerGate]:
    client = Redis.from_url(redis_url)
    prefix = f"test-gate-{uuid.uuid4().hex[:8]}:"
    yield PartnerGate(
        client, prefix, {"payments-api": 20.0}, BreakerPolicy(failures=3, open_s=0.3, max_open_s=1)
    )
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


# --- configuration ---------------------------------------------------------------------------


def test_rate_limits_parse_the_contract_form():
    assert parse_rate_limits("transportation-api=10, payments-api=50") == {
        "transportation-api": 10.0,
        "payments-api": 50.0,
    }
    assert parse_rate_limits("/receipts-api/=2.5") == {"receipts-api": 2.5}
    assert parse_rate_limits("") == {} == parse_rate_limits(None)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("flights=10", "unknown partner 'flights'"),
        ("transportation-api", "'transportation-api' is not <prefix>=<calls per second>"),
        ("transportation-api=0", "must be > 0"),
        ("transportation-api=-3", "must be > 0"),
        ("transportation-api=ten", "must be > 0"),
        ("transportation-api=inf", "must be > 0"),
        ("payments-api=1,payments-api=2", "given twice"),
    ],
)
def test_a_malformed_rate_limit_is_refused_at_start_naming_it(value: str, named: str):
    with pytest.raises(ValueError, match="PARTNER_RATE_LIMITS") as error:
        Settings(partner_rate_limits=value)
    assert named in str(error.value)


def test_retry_after_in_both_forms_with_a_default_and_a_cap():
    now = time.time()
    assert parse_retry_after("2", default_s=1, max_s=300) == (2.0, None)
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    wait, note = parse_retry_after(date, default_s=1, max_s=300, now=now)
    assert 28 <= wait <= 31 and note is None
    past = format_datetime(datetime.fromtimestamp(now, UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past, default_s=1, max_s=300, now=now) == (0.0, None)
    for missing in (None, "", "  "):
        assert parse_retry_after(missing, default_s=1, max_s=300) == (1, "no Retry-After")
    for bad in ("-5", "soon", "1.5"):
        wait, note = parse_retry_after(bad, default_s=1, max_s=300)
        assert wait == 1 and note is not None and "malformed" in note
    wait, note = parse_retry_after("86400", default_s=1, max_s=300)
    assert wait == 300 and note is not None and "capped" in note


# --- the gate ---------------------------------------------------------------------------------


def test_a_retry_after_one_process_received_holds_for_every_process(gate: PartnerGate):
    other = PartnerGate(gate.redis, gate.prefix)  # another worker process, same Redis
    assert gate.acquire(FLIGHTS, undo=False).wait_s == 0
    gate.report(FLIGHTS, "throttled", retry_after_s=0.5)
    turned = other.acquire(FLIGHTS, undo=True)
    assert turned.reason == "retry_after" and 0.3 < turned.wait_s <= 0.5
    time.sleep(0.55)
    assert other.acquire(FLIGHTS, undo=False).wait_s == 0


def test_the_circuit_opens_after_failures_in_a_row_lets_one_probe_through_and_closes(
    gate: PartnerGate,
):
    for _ in range(2):
        gate.report(FLIGHTS, "fail")
    assert gate.acquire(FLIGHTS, undo=False).reason == "go"  # 2 of 3: still closed
    gate.report(FLIGHTS, "ok")  # a success clears the count
    for _ in range(3):
        gate.report(FLIGHTS, "fail")
    assert gate.state(FLIGHTS)["state"] == "open"
    assert gate.acquire(FLIGHTS, undo=True).reason == "open"
    time.sleep(0.35)
    probe = gate.acquire(FLIGHTS, undo=False)
    assert probe.reason == "go" and probe.state == "half_open"
    # While the probe is out nobody else calls.
    assert gate.acquire(FLIGHTS, undo=True).reason == "half_open"
    gate.report(FLIGHTS, "fail")  # the probe failed: open again, for twice as long
    assert float(gate.state(FLIGHTS)["open_for"]) == pytest.approx(0.6)
    time.sleep(0.65)
    assert gate.acquire(FLIGHTS, undo=False).state == "half_open"
    assert gate.report(FLIGHTS, "ok") == "half_open"
    after = gate.acquire(FLIGHTS, undo=False)
    assert after.reason == "go" and after.clear


def test_the_quota_spaces_calls_fleet_wide_and_undos_go_before_bookings(gate: PartnerGate):
    payments = "payments-api"  # 20 calls a second: one every 50 ms
    assert gate.acquire(payments, undo=False).reason == "go"
    booking = gate.acquire(payments, undo=False)
    assert booking.reason == "quota" and 0 < booking.wait_s <= 0.05
    undo = gate.acquire(payments, undo=True)
    assert undo.reason == "quota"
    time.sleep(undo.wait_s)
    # The undo was turned away: a booking asking first now still waits for it.
    assert gate.acquire(payments, undo=False).reason == "quota"
    assert gate.acquire(payments, undo=True).reason == "go"
    admitted, started = 0, time.monotonic()
    while time.monotonic() - started < 0.5:
        admitted += gate.acquire(payments, undo=True).reason == "go"
    assert 8 <= admitted <= 11  # 0.5 s at 20 a second


# --- the client against a partner answering 429 -----------------------------------------------


def flight_booking_args() -> dict[str, object]:
    return {
        "customer_email": "ann@example.com",
        "flight_id": str(uuid.uuid4()),
        "passenger_names": ["Ann", "Bob"],
        "reference_id": str(uuid.uuid4()),
        "idempotency_key": uuid.uuid4().hex,
    }


def test_a_429_is_not_retried_in_process_and_tells_when(
    gate: PartnerGate, sim: SimulatorClient, simulator: SimulatorServer
):
    sim.fault("/transportation-api", status=429, times=1, retry_after=1)
    client = Partners(simulator.url, timeout_s=2, attempts=4, max_wait_s=0.05, gate=gate)
    since = len(sim.calls())
    args = flight_booking_args()
    with pytest.raises(PartnerBusy) as busy:
        client.book_flight(**args)  # type: ignore[arg-type]
    assert busy.value.reason == "retry_after" and busy.value.wait_s == 1
    assert not busy.value.maybe_processed
    assert len(sim.calls()[since:]) == 1  # one call: no retry storm
    with pytest.raises(PartnerBusy):  # the whole fleet waits, without calling
        client.book_flight(**args)  # type: ignore[arg-type]
    assert len(sim.calls()[since:]) == 1
    time.sleep(1.05)
    assert len(client.book_flight(**args)) == 2  # type: ignore[arg-type]


def test_a_503_with_retry_after_is_honoured_and_counts_as_a_failure(
    gate: PartnerGate, sim: SimulatorClient, simulator: SimulatorServer
):
    sim.fault("/payments-api", status=503, times=1, retry_after=1)
    client = Partners(simulator.url, timeout_s=2, attempts=4, max_wait_s=0.05, gate=gate)
    with pytest.raises(PartnerBusy) as busy:
        client.refund(payment_reference="t1", reason="test", deduplication_id=uuid.uuid4().hex)
    assert busy.value.wait_s == 1 and busy.value.maybe_processed
    assert gate.state("payments-api")["failures"] == "1"


def test_calls_failing_late_while_the_circuit_is_open_do_not_delay_the_first_probe(
    gate: PartnerGate,
):
    for _ in range(3):
        gate.report(FLIGHTS, "fail")  # opens: the first probe in open_s (0.3 s)
    for _ in range(5):
        gate.report(FLIGHTS, "fail")  # calls let through before it opened, failing late
    assert float(gate.state(FLIGHTS)["open_for"]) == pytest.approx(0.3)
    time.sleep(0.35)
    assert gate.acquire(FLIGHTS, undo=False).state == "half_open"  # the probe goes

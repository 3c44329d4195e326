"""The partner client's total deadline per call, against the simulator over real HTTP.

On a `-P threads` pool Celery enforces no time limit, so this deadline is what bounds a step
when a partner hangs. No timing is asserted beyond "far sooner than the partner's hang".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from adapters.metrics import Meter
from adapters.partners import Partners, PartnerUnavailable
from partner_simulator.server import SimulatorClient, start_subprocess

HANG_MS = 60_000  # far beyond every timeout and deadline below


@pytest.fixture
def own_simulator() -> Iterator[tuple[str, SimulatorClient]]:
    """A simulator of the test's own, killed at the end: hung requests die with it instead of
    waking up later in a shared simulator's call log."""
    proc, url = start_subprocess()
    try:
        with SimulatorClient(url) as sim:
            yield url, sim
    finally:
        proc.kill()
        proc.wait()


def book(partners: Partners) -> list[str]:
    return partners.book_flight(
        customer_email="ann@example.com",
        flight_id=str(uuid.uuid4()),
        passenger_names=["Ann"],
        reference_id="b-1",
        idempotency_key=str(uuid.uuid4()),
    )


def test_a_hanging_partner_ends_the_call_at_its_deadline(
    own_simulator: tuple[str, SimulatorClient],
) -> None:
    url, sim = own_simulator
    sim.set_latency(HANG_MS)
    partners = Partners(
        url, timeout_s=0.5, attempts=50, max_wait_s=0.05, deadline_s=2.0, meter=Meter()
    )
    started = time.monotonic()
    try:
        with pytest.raises(PartnerUnavailable, match="deadline 2 s"):
            book(partners)
    finally:
        partners.close()

    assert time.monotonic() - started < HANG_MS / 1000 / 4  # ended by the client, not the partner


def test_the_deadline_stops_retries_before_the_attempts_run_out(
    own_simulator: tuple[str, SimulatorClient],
) -> None:
    url, sim = own_simulator
    sim.fault("/transportation-api", status=503, rate=1.0)
    partners = Partners(
        url, timeout_s=1.0, attempts=200, max_wait_s=0.3, deadline_s=1.5, meter=Meter()
    )
    try:
        with pytest.raises(PartnerUnavailable):
            book(partners)
    finally:
        partners.close()

    tries = len(sim.calls("/transportation-api"))
    assert 2 <= tries < 200  # retried, but not 200 times: the deadline ended it


def test_without_faults_the_deadline_changes_nothing(
    own_simulator: tuple[str, SimulatorClient],
) -> None:
    url, sim = own_simulator
    sim.set_latency(20, jitter_ms=10)
    partners = Partners(url, timeout_s=2.0, attempts=3, deadline_s=5.0, meter=Meter())
    try:
        assert len(book(partners)) == 1
    finally:
        partners.close()

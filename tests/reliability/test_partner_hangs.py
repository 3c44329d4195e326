"""Scenario 9: a partner hangs, far longer than any timeout.

On a `-P threads` pool Celery enforces no `task_time_limit`, so what ends a step is the partner
client alone: each try's HTTP timeout and a total deadline per call across its tries
(`HTTP_CALL_DEADLINE_S`, `COMPENSATION_CALL_DEADLINE_S`). The return flight's airline answers
nothing for two minutes; the step must end within its deadline, the saga must decide (here:
give up at once, the bundle being past its `BOOKING_DEADLINE_S` when the step fails, and roll
back; the undo that re-sends the hung booking hangs in its turn, and then parks the bundle or,
once the airline's circuit is open, waits in the delayed queue), and once the airline answers
again the bundle must end `failed` with nothing leaked.
"""

from __future__ import annotations

import time

import pytest

from process_manager.bundle import UNDOING, Status
from tests.reliability.stack import POOLS

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("worker_pool", POOLS)]

FLIGHTS = "/transportation-api/flight-tickets"
HANG_MS = 120_000
DEADLINE_S = 3
BOUNDS = {
    "HTTP_TIMEOUT_S": "1",
    "HTTP_CALL_DEADLINE_S": str(DEADLINE_S),
    "COMPENSATION_CALL_DEADLINE_S": str(DEADLINE_S),
    "HTTP_RETRY_ATTEMPTS": "50",  # the deadline, not the attempts, ends the call
    "COMPENSATION_RETRY_ATTEMPTS": "50",
    "TASK_TIME_LIMIT_S": "3600",  # and not Celery (which would not on threads anyway)
    # Forward steps give up by time (issue 24): past the booking deadline, at the first failure.
    "BOOKING_DEADLINE_S": "2",
    "PARKED_RETRY_BASE_S": "1",
    "PARKED_RETRY_MAX_S": "2",
    "STALE_AFTER_S": "5",
}


def _at(bundle, event: str) -> float:
    return next(h.at for h in bundle.history if h.event == event).timestamp()


def _decided(st, bundle_id: str, timeout: float):
    """The bundle once the saga gave the hung step up (its failure recorded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bundle = st.store.get(bundle_id)  # None until the worker has stored the request
        if bundle is not None and bundle.failure is not None:
            break
        time.sleep(0.25)
    return st.bundle(bundle_id)


def test_a_hanging_partner_ends_the_step_at_its_deadline_and_the_saga_decides(
    make_stack, record, worker_pool
):
    st = make_stack("hang", **BOUNDS)
    st.start_worker("w", concurrency=8)
    st.sim.fault(FLIGHTS, status=None, times=1, methods=["PUT"])  # the inbound leg passes
    st.sim.fault(FLIGHTS, status=None, delay_ms=HANG_MS, times=1000, methods=["PUT"])
    bundle_id = st.book()

    decided = _decided(st, bundle_id, timeout=60)
    # The undo re-sends the hung booking: let it reach its own deadline before looking.
    time.sleep(DEADLINE_S + 2)
    settled = st.bundle(bundle_id).status
    step_s = _at(decided, "FlightBookingFailed_v1") - _at(decided, "FlightBooked_v1")
    statuses, healing_s = st.heal(timeout=120)
    time.sleep(1)
    report = st.check()
    bundle = st.bundle(bundle_id)
    record(
        "9-partner-hangs",
        "A partner that hangs",
        report,
        faults=[
            f"every flight booking after the inbound leg's answers only after {HANG_MS // 1000} s",
            f"HTTP_TIMEOUT_S=1, HTTP_CALL_DEADLINE_S={DEADLINE_S}, COMPENSATION_CALL_DEADLINE_S="
            f"{DEADLINE_S}, 50 attempts each, TASK_TIME_LIMIT_S=3600, BOOKING_DEADLINE_S=2",
            "then the airline answers again (faults cleared, beat every 1 s)",
        ],
        bundles=1,
        return_step_seconds=round(step_s, 1),
        status_while_hanging=str(settled),
        outcome=str(bundle.status),
        reason=bundle.failure.reason if bundle.failure else None,
        healing_seconds=round(healing_s, 1),
    )

    # Ended by the client's deadline (3 s, plus the step's own work and a loaded machine's
    # slack), not by the partner's two minutes nor Celery's time limit.
    assert step_s < HANG_MS / 1000 / 4, step_s
    # Parked, or waiting in the delayed queue (rolling back) once the airline's circuit opened.
    assert settled in UNDOING | {Status.FAILED}, settled
    assert bundle.failure is not None and bundle.failure.in_doubt
    assert "deadline" in bundle.failure.reason, bundle.failure.reason
    assert statuses[bundle_id] is Status.FAILED, str(report)
    assert report.violations == [], str(report)

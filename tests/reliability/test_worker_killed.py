"""Scenario 1: the worker is killed (`kill -9` of its process group) while steps run.

Five bundles are each held inside a different step kind by the simulator's delay (show
booking, inbound flight, return flight, a refund, a flight cancellation), then the worker dies.
A new worker finishes them, healed by one mechanism at a time so each is shown to suffice:
- redelivery: the broker gives the unacked messages back once `VISIBILITY_TIMEOUT_S` has passed
  (kombu sweeps when a worker starts, then only every ~100 s: see docs/reliability.md);
- reconciler: beat's `vip_bundle.reconcile` resumes bundles with no transition for
  `STALE_AFTER_S` from their stored state; the killed messages never come back.
Production runs both; the steps are idempotent, so whichever comes second does nothing.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from process_manager.bundle import Status
from tests.reliability.stack import POOLS, Stack, log_count, received, reconciled

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("worker_pool", POOLS)]

HOLD_MS = 20_000  # how long a held partner call takes: longer than holding all five
VISIBILITY_S = 30  # longer than any step, as production must have it
# The held calls must still be at the partner when the worker dies, however long holding all
# five takes on a loaded machine: the client waits out a hold instead of timing out and
# retrying past it (the rules hold one call each).
WAIT_FOR_HOLDS = {
    "HTTP_TIMEOUT_S": str(HOLD_MS // 1000 + 10),
    "HTTP_CALL_DEADLINE_S": "60",
    "COMPENSATION_CALL_DEADLINE_S": "60",
}
SHOW, FLIGHTS = "/dead-nation-api/ticket/booking", "/transportation-api/flight-tickets"
REFUNDS = "/payments-api/refunds"


def hold_next_call(st: Stack, path: str, method: str, after: int = 0) -> None:
    """The next call (after `after` that pass) to `path` answers only after HOLD_MS."""
    if after:
        st.sim.fault(path, status=None, times=after, methods=[method])
    st.sim.fault(path, status=None, delay_ms=HOLD_MS, times=1, methods=[method])


def until_held(st: Stack, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while st.faults_left():
        assert time.monotonic() < deadline, "a held call never came"
        time.sleep(0.05)


def hold_one_bundle_per_step_kind(st: Stack) -> dict[str, str]:
    """One bundle waiting inside each step kind; one at a time, so each takes its own hold."""
    held: dict[str, str] = {}
    stages: list[tuple[str, Callable[[], str]]] = [
        ("book_show_tickets", lambda: st.book()),
        ("book_flight(inbound)", lambda: st.book()),
        ("book_flight(return)", lambda: st.book()),
        ("refund_ticket", lambda: sold_out(st, "inbound_flight_id")),
        ("cancel_flight_tickets", lambda: sold_out(st, "return_flight_id")),
    ]
    holds = [
        (SHOW, "POST", 0),
        (FLIGHTS, "PUT", 0),
        (FLIGHTS, "PUT", 1),  # the inbound leg passes, the return leg is held
        (REFUNDS, "PUT", 0),
        (FLIGHTS, "DELETE", 0),
    ]
    for (step, book), (path, method, after) in zip(stages, holds, strict=True):
        hold_next_call(st, path, method, after)
        held[step] = book()
        until_held(st)
    return held


def sold_out(st: Stack, leg_field: str) -> str:
    flight_id = str(uuid.uuid4())
    st.limit_flight(flight_id, 0)
    return st.book(**{leg_field: flight_id})


EXPECTED = {
    "book_show_tickets": Status.FINALIZED,
    "book_flight(inbound)": Status.FINALIZED,
    "book_flight(return)": Status.FINALIZED,
    "refund_ticket": Status.FAILED,
    "cancel_flight_tickets": Status.FAILED,
}


@pytest.mark.parametrize("healer", ["redelivery", "reconciler"])
def test_worker_killed_mid_step_a_new_worker_finishes_every_bundle(make_stack, record, healer):
    st = make_stack(f"kill-{healer}", VISIBILITY_TIMEOUT_S=str(VISIBILITY_S), **WAIT_FOR_HOLDS)
    first = st.start_worker("first", concurrency=8)
    held = hold_one_bundle_per_step_kind(st)
    held_since = time.monotonic()
    first.kill()
    statuses_at_kill = {step: str(st.bundle(bid).status) for step, bid in held.items()}

    if healer == "redelivery":
        # Unacked messages are restored by the first sweep of a worker that starts after they
        # have been invisible for VISIBILITY_TIMEOUT_S (no reconciler runs).
        time.sleep(max(0.0, VISIBILITY_S + 2 - (time.monotonic() - held_since)))
        second = st.start_worker("second")
    else:
        # The killed messages stay invisible for the whole test; only the reconciler can heal
        # (it runs in the worker, so the worker's STALE_AFTER_S is the one that counts).
        second = st.start_worker("second", VISIBILITY_TIMEOUT_S="3600", STALE_AFTER_S="5")
        st.start_beat(RECONCILE_EVERY_S="1")
    statuses = st.wait(timeout=120)
    # Held calls still finish at the partner after the kill: let them land before reading.
    time.sleep(max(0.0, HOLD_MS / 1000 + 1 - (time.monotonic() - held_since)))
    report = st.check()

    redelivered = Counter(name for tid, name in received(second).items() if tid in received(first))
    resumed = reconciled(second)
    record(
        f"1-kill-{healer}",
        f"Worker killed mid-step, healed by {healer}",
        report,
        faults=[
            f"each of {len(held)} bundles held {HOLD_MS // 1000} s inside one step kind "
            "(simulator delay): " + ", ".join(held),
            "kill -9 of the worker's process group while all five were held",
            f"VISIBILITY_TIMEOUT_S={VISIBILITY_S}"
            + (", new worker started after it" if healer == "redelivery" else "")
            + (", beat with STALE_AFTER_S=5" if healer == "reconciler" else ", no reconciler"),
        ],
        bundles=len(st.submitted),
        status_at_kill=statuses_at_kill,
        redelivered_messages=dict(redelivered),
        reconciler=dict(resumed),
        steps_skipped_as_done=log_count(second, ": skipped, bundle"),
    )

    assert {step: statuses[bid] for step, bid in held.items()} == EXPECTED, str(report)
    assert report.violations == [], str(report)
    if healer == "redelivery":
        assert sum(redelivered.values()) >= len(held)
        assert not resumed
    else:
        assert not redelivered
        assert resumed["resumed"] + resumed["rollbacks_resumed"] >= len(held)


def test_a_step_that_kills_its_worker_every_time_is_given_up(make_stack, record):
    """A poison step: every worker that runs it dies. Celery would redeliver it forever; the
    saga counts starts and, past 2 * MAX_STEP_ATTEMPTS, rolls back (the flight is in doubt:
    its call is re-sent with the same key to learn its tickets, which are then cancelled)."""
    healing = {"MAX_STEP_ATTEMPTS": "1", "STALE_AFTER_S": "6"}  # at most 2 starts
    st = make_stack("poison", **healing)
    worker = st.start_worker("w0")
    st.start_beat(RECONCILE_EVERY_S="1")
    bundle_id = ""
    kills = 0
    for _ in range(2):
        st.sim.fault(FLIGHTS, status=None, delay_ms=4_000, times=1, methods=["PUT"])
        if kills:  # armed first: the reconciler may re-send the step as soon as it is up
            worker = st.start_worker(f"w{kills}", **healing)
        bundle_id = bundle_id or st.book()
        until_held(st, timeout=60)  # the inbound leg started (by the chain, then the reconciler)
        worker.kill()
        kills += 1
    worker = st.start_worker(f"w{kills}", **healing)
    statuses = st.wait(timeout=90)
    time.sleep(1)
    report = st.check()
    bundle = st.bundle(bundle_id)
    record(
        "1-kill-poison",
        "A step that kills its worker every time",
        report,
        faults=[
            "the inbound flight call held 4 s, the worker killed while it is held, twice "
            "(first run from the chain, second from the reconciler)",
            "MAX_STEP_ATTEMPTS=1 (so at most 2 starts), STALE_AFTER_S=6, beat every 1 s",
        ],
        bundles=1,
        kills=kills,
        outcome=str(bundle.status),
        reason=bundle.failure.reason if bundle.failure else None,
        flights_cancelled_after_resolving=[str(leg) for leg in bundle.cancelled_legs],
    )

    assert statuses[bundle_id] is Status.FAILED, str(report)
    assert bundle.failure is not None and bundle.failure.in_doubt
    assert "started 3 times" in bundle.failure.reason
    assert report.violations == [], str(report)

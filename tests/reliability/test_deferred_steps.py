"""Scenario 13 (issue 24): steps waiting on a partner, past their deadline and past a kill -9.

- The airline throttles the bookings (429 + `Retry-After: 2`) for longer than the bundles'
  booking deadline (`BOOKING_DEADLINE_S=8`): each return leg waits, never fails, until its
  deadline; then the saga gives up and the bundle rolls back saying why, refunding its show
  tickets and cancelling its inbound leg (a cancel is a DELETE, which the airline still
  answers, paced by the same "not before"). Every try of the return leg was turned away
  unprocessed, so it is not in doubt: the rollback neither waits for the airline to take
  bookings again nor books (to then cancel) a ticket nobody will fly on.
- Two workers while every bundle sits in the delayed queue (429 + `Retry-After: 3`): one is
  killed (`kill -9` of its process group). The waiting steps are in Redis, not in the killed
  worker's memory, so the survivor's releaser takes them up when the airline is due. Then a
  process takes due bundles as a releaser does (`DeferredSteps.take_due`) and is killed -9
  before sending them: they are leased, not popped, and come back when the lease runs out.

Beat runs with the suite's quiet `STALE_AFTER_S` (an hour): the reconciler heals nothing here,
and the messages of the killed worker would not come back for an hour (`VISIBILITY_TIMEOUT_S`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from process_manager.bundle import Status
from tests.reliability.backpressure import (
    FLIGHTS,
    ON_THREADS,
    THREADS,
    between,
    leased,
    per_bundle,
    settle_seconds,
    waiting,
)
from tests.reliability.stack import Stack, reconciled
from vip_bundles import local_stack

pytestmark = [pytest.mark.slow, ON_THREADS]

DEADLINE_S, LIMIT_S, BUNDLES = 8, 20, 10
KILL_BUNDLES, KILL_RETRY_AFTER_S, KILL_LIMIT_S = 20, 3, 8
TAKEN = 5
# A releaser killed between taking due bundles and sending them (tasks/releaser.py), as a
# process of its own: it races the surviving worker's releaser for the first due bundles.
DYING_RELEASER = """
import os, signal, sys, time
from redis import Redis
from adapters.deferred import DeferredSteps
steps, want = DeferredSteps(Redis.from_url(sys.argv[1]), sys.argv[2]), int(sys.argv[3])
taken, until = [], time.monotonic() + 20
while len(taken) < want and time.monotonic() < until:
    taken += steps.take_due("transportation-api", "forward", want - len(taken))
    time.sleep(0.01)
print(" ".join(taken), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_rate_limit_past_the_booking_deadline_rolls_back_with_that_reason(
    private_redis, make_stack, record
):
    st = make_stack("deadline", url=private_redis, BOOKING_DEADLINE_S=str(DEADLINE_S))
    worker = st.start_worker("a", concurrency=THREADS, exact=True)
    st.start_beat(RECONCILE_EVERY_S="2")
    # Partners answer in half a second, so every inbound leg reaches the airline before any
    # return leg does: the first BUNDLES bookings pass (the inbound legs), then every booking
    # is throttled for LIMIT_S. Cancels (DELETE) are answered throughout.
    st.sim.set_latency(500)
    st.sim.fault(FLIGHTS, status=None, times=BUNDLES, methods=["PUT"])
    st.sim.fault(FLIGHTS, status=429, rate=1.0, retry_after=2, methods=["PUT"])
    first_send = time.time()
    for _ in range(BUNDLES):
        st.book()

    statuses = st.wait(timeout=LIMIT_S + 30)
    time.sleep(max(first_send + LIMIT_S - time.time(), 0))
    st.sim.clear_faults()
    lifted = time.time()
    time.sleep(2)  # anything still due at the airline would now be sent: nothing must be
    report = st.check()
    bundles = [st.bundle(i) for i in st.submitted]
    reasons = {b.failure.reason for b in bundles if b.failure}
    settled = settle_seconds(st, st.submitted, first_send)
    flights = st.sim.calls(FLIGHTS)
    bookings = [c for c in flights if c["method"] == "PUT"]
    record(
        "13-deadline",
        "A rate limit that outlasts the booking deadline",
        report,
        faults=[
            f"BOOKING_DEADLINE_S={DEADLINE_S}; every partner answers after 500 ms",
            f"the first {BUNDLES} flight bookings (the inbound legs) pass, then every booking is "
            f"answered 429 + `Retry-After: 2` for {LIMIT_S} s from the first send; cancels pass",
            f"{BUNDLES} bundles; one worker `-P threads -c {THREADS}` and beat",
        ],
        bundles=BUNDLES,
        outcome=dict(Counter(str(s) for s in statuses.values())),
        reasons=sorted(reasons),
        given_up_in_doubt=sum(1 for b in bundles if b.failure and b.failure.in_doubt),
        settled_s_after_first_send=f"first {settled[0]}, last {settled[-1]}",
        bookings_throttled=sum(1 for c in bookings if c["status"] == 429),
        bookings_a_bundle=f"at most {max(per_bundle(bookings).values())}",
        bookings_after_the_limit_lifted=len(between(bookings, lifted, time.time())),
        flight_tickets_cancelled=sum(
            1 for c in flights if c["method"] == "DELETE" and c["status"] < 300
        ),
        step_failures=sum(b.step_failures for b in bundles),
    )

    assert report.violations == [], str(report)
    assert all(s is Status.FAILED for s in statuses.values()), statuses
    assert all(b.failure is not None and "booking deadline" in b.failure.reason for b in bundles), (
        reasons
    )
    # Only the deadline ended them: the waits burnt no attempt and nothing needed healing.
    assert all(b.step_failures == 0 for b in bundles)
    assert not reconciled(worker)
    assert not any(b.failure and b.failure.in_doubt for b in bundles)
    assert not between(bookings, lifted, time.time())
    assert settled[-1] <= LIMIT_S + 10, settled


def test_a_worker_killed_while_steps_wait_loses_none_of_them(private_redis, make_stack, record):
    st = make_stack("deferred-kill", url=private_redis)
    doomed = st.start_worker("a", concurrency=THREADS, exact=True)
    survivor = st.start_worker("b", concurrency=THREADS, exact=True)
    st.start_beat(RECONCILE_EVERY_S="2")
    st.sim.fault(FLIGHTS, status=429, rate=1.0, retry_after=KILL_RETRY_AFTER_S)
    first_send = time.time()
    for _ in range(KILL_BUNDLES):
        st.book()

    # Kill once every bundle waits in the delayed queue (each turned away at its first leg).
    deadline = time.monotonic() + 30
    while waiting(st) < KILL_BUNDLES and time.monotonic() < deadline:
        time.sleep(0.05)
    at_kill = {"waiting": waiting(st), "leased": leased(st)}
    doomed.kill()
    killed_at = time.time()
    taken, taken_at = _take_and_die(st), time.time()
    time.sleep(max(first_send + KILL_LIMIT_S - time.time(), 0))
    st.sim.clear_faults()
    lifted = time.time()

    statuses = st.wait(timeout=60)
    report = st.check()
    settled = settle_seconds(st, st.submitted, lifted)
    flights = st.sim.calls(FLIGHTS)
    record(
        "13-deferred-kill",
        "Worker killed while steps wait on a partner",
        report,
        faults=[
            f"every flight call answered 429 + `Retry-After: {KILL_RETRY_AFTER_S}` for "
            f"{KILL_LIMIT_S} s from the first send, {KILL_BUNDLES} bundles sent at once",
            f"two workers `-P threads -c {THREADS}` and beat; once every bundle waited in the "
            "delayed queue, `kill -9` of one worker's process group",
            f"then a process takes up to {TAKEN} due bundles as a releaser does and is killed "
            "-9 before sending them (LEASE_S=30)",
        ],
        bundles=KILL_BUNDLES,
        at_kill=at_kill,
        killed_s_after_first_send=round(killed_at - first_send, 1),
        flight_calls_after_kill=len(between(flights, killed_at, time.time())),
        finalized_s_after_limit_lifted=f"last {settled[-1]}",
        taken_by_a_releaser_killed_before_sending=len(taken),
        those_finalized_s_after_taken=settle_seconds(st, taken, taken_at),
        step_failures=sum(st.bundle(i).step_failures for i in st.submitted),
        reconciled=dict(reconciled(survivor)),
    )

    assert at_kill["waiting"] == KILL_BUNDLES, at_kill
    assert taken, "the dying releaser took nothing"
    assert report.violations == [], str(report)
    assert all(s is Status.FINALIZED for s in statuses.values()), statuses
    assert not reconciled(survivor)
    assert survivor.process.poll() is None


def _take_and_die(st: Stack) -> list[str]:
    """Run DYING_RELEASER; the bundles it took (and left leased)."""
    done = subprocess.run(
        [sys.executable, "-c", DYING_RELEASER, st.redis_url, "vip-bundles:", str(TAKEN)],
        env=st.env(),
        cwd=local_stack.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -9, done.stderr
    return done.stdout.split()

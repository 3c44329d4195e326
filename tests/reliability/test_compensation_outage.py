"""Scenario 4: payments are down (503, no `Retry-After`) for 20 s while bundles roll back.

Bundles whose return flight is sold out must refund their tickets, but every refund answers
503. The undos' first failures open the payments circuit for the whole fleet (issue 24): from
then on no process calls payments except one probe per interval (1 s, doubling to 10 s), and
the undos wait in the delayed queue (status `rolling_back`, not parked: they never give up),
instead of a retry storm against a partner that is down. Bundles that need no refund still
finalize meanwhile. Once payments are back the next probe closes the circuit, the releaser
sends the waiting undos, and every bundle ends `failed` with each ticket refunded once.

Beat runs as in production (the reconciler every second, parked bundles retried after 1 s),
so a bundle an undo did park on the way would be taken up too; *parked on the way* counts them.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest

from process_manager.bundle import UNDOING, Status
from tests.reliability.backpressure import (
    ON_THREADS,
    PAYMENTS,
    THREADS,
    between,
    per_second,
    settled_at,
    waiting,
)

pytestmark = [pytest.mark.slow, ON_THREADS]

ROLLBACKS, FINALIZING, OUTAGE_S = 10, 5, 20
BACKOFF = {"PARKED_RETRY_BASE_S": "1", "PARKED_RETRY_MAX_S": "4"}
BACK_WITHIN_S = 15


def test_rollbacks_wait_out_a_payments_outage_without_hammering_it(
    private_redis, make_stack, record
):
    st = make_stack("outage", url=private_redis, **BACKOFF)
    worker = st.start_worker("a", concurrency=THREADS, exact=True)
    st.start_beat(RECONCILE_EVERY_S="1")
    st.sim.fault(PAYMENTS, status=503, rate=1.0)  # down until cleared
    down_at = time.time()
    rolling = []
    for _ in range(ROLLBACKS):
        flight_id = str(uuid.uuid4())
        st.limit_flight(flight_id, 0)
        rolling.append(st.book(return_flight_id=flight_id))
    fine = [st.book() for _ in range(FINALIZING)]

    finalized_meanwhile = st.wait(fine, timeout=OUTAGE_S)
    time.sleep(max(down_at + OUTAGE_S - time.time(), 0))
    during = st.statuses(rolling)
    waiting_at_return = waiting(st)
    st.sim.clear_faults()
    back_at = time.time()

    statuses = st.wait(timeout=60)
    report = st.check()
    payments = st.sim.calls(PAYMENTS)
    while_down = between(payments, down_at, back_at)
    first_call = min((c["at"] for c in while_down), default=back_at)
    rate = per_second(while_down, first_call)
    back_in = sorted(round(settled_at(st.bundle(i)) - back_at, 1) for i in rolling)
    bundles = [st.bundle(i) for i in rolling]
    record(
        "4-outage",
        "Compensation outage",
        report,
        faults=[
            f"payments answer 503 (no Retry-After) to every call for {OUTAGE_S} s",
            f"{ROLLBACKS} bundles with the return flight sold out (must refund), {FINALIZING} "
            "that need no refund, sent at once",
            f"one worker `-P threads -c {THREADS}`, the circuit breaker's defaults (opens after "
            "5 failures in a row, probes every 1 s doubling to 10 s), beat (RECONCILE_EVERY_S=1, "
            "PARKED_RETRY_BASE_S=1)",
        ],
        bundles=len(st.submitted),
        status_while_down=dict(Counter(str(s) for s in during.values())),
        finalized_while_down=sum(s is Status.FINALIZED for s in finalized_meanwhile.values()),
        waiting_in_delayed_queue_at_return=waiting_at_return,
        payment_calls_while_down=len(while_down),
        payment_calls_a_second_while_down=f"{len(while_down) / OUTAGE_S:.2f} on average "
        f"(target at most 2), per second from the first: {rate}",
        rolled_back_s_after_return=f"last {back_in[-1]} (target {BACK_WITHIN_S}), first "
        f"{back_in[0]}",
        # The circuit opens in the first second; then one probe per interval (1 s, doubling).
        probes_s_after_first_call=[round(c["at"] - first_call, 1) for c in _probes(while_down)],
        parked_on_the_way=sum(1 for b in bundles if b.compensation_failures),
    )

    assert report.violations == [], str(report)
    assert all(s is Status.FINALIZED for s in finalized_meanwhile.values())
    assert all(s in UNDOING for s in during.values()), during
    assert all(statuses[i] is Status.FAILED for i in rolling)
    assert all(statuses[i] is Status.FINALIZED for i in fine)
    assert len(while_down) <= 2 * OUTAGE_S, rate
    assert back_in[-1] <= BACK_WITHIN_S, back_in
    assert worker.process.poll() is None


def _probes(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls after the first burst: each more than half a second after the one before."""
    at = sorted(calls, key=lambda c: c["at"])
    return [c for before, c in pairwise(at) if c["at"] - before["at"] > 0.5]

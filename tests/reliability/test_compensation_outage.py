"""Scenario 4: payments are down for longer than the undo steps retry.

Bundles whose return flight is sold out must refund their tickets, but every refund answers
503: they park in `compensation_failed` (listed, never dropped) while bundles that need no
refund still finalize. The reconciler's retries during the outage fail too and back off. Once
payments are back, a real `celery beat` takes the parked bundles up and they end `failed`,
with each ticket refunded exactly once.
"""

from __future__ import annotations

import time
import uuid

import pytest

from process_manager.bundle import Status
from tests.reliability.stack import SETTLED

pytestmark = pytest.mark.slow

ROLLBACKS, FINALIZING = 10, 5
BACKOFF = {"PARKED_RETRY_BASE_S": "1", "PARKED_RETRY_MAX_S": "4"}


def test_parked_rollbacks_finish_once_payments_are_back(make_stack, record):
    st = make_stack("outage", **BACKOFF)
    worker = st.start_worker("worker")
    st.sim.fault("/payments-api", status=503, rate=1.0)  # down until cleared
    rolling = []
    for _ in range(ROLLBACKS):
        flight_id = str(uuid.uuid4())
        st.limit_flight(flight_id, 0)
        rolling.append(st.book(return_flight_id=flight_id))
    fine = [st.book() for _ in range(FINALIZING)]

    st.wait(until=SETTLED, timeout=120)
    during = st.check(allow_parked=True)
    listed = {b.vip_bundle_id for b in st.store.list(Status.COMPENSATION_FAILED, 0, 100)}

    # Still down: the reconciler's retries (sent by name here) fail again and park again.
    first_round = {i: st.bundle(i).compensation_failures for i in rolling}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        again = {i: st.bundle(i) for i in rolling}
        if all(
            b.status is Status.COMPENSATION_FAILED and b.compensation_failures > first_round[i]
            for i, b in again.items()
        ):
            break
        st.reconcile()
        time.sleep(1)
    retried_in_outage = sum(st.bundle(i).compensation_failures > first_round[i] for i in rolling)

    statuses, healed_in_s = st.heal()
    report = st.check()
    refund_503s = sum(1 for c in st.sim.calls("/payments-api") if c["status"] == 503)
    record(
        "4-outage",
        "Compensation outage",
        report,
        faults=[
            "payments answer 503 to every call until the test clears it "
            "(undo steps try COMPENSATION_RETRY_ATTEMPTS=3 times)",
            f"{ROLLBACKS} bundles with the return flight sold out (must refund), "
            f"{FINALIZING} that need no refund",
            "reconciler retries during the outage (vip_bundle.reconcile sent by name), then "
            "payments back and a real celery beat (RECONCILE_EVERY_S=1, PARKED_RETRY_BASE_S=1)",
        ],
        bundles=len(st.submitted),
        during_outage=during.as_dict(),
        parked_listed=len(listed),
        retried_and_parked_again=retried_in_outage,
        refund_calls_refused=refund_503s,
        healed_after_payments_back_s=round(healed_in_s, 1),
        compensation_failures=sum(st.bundle(i).compensation_failures for i in rolling),
    )

    assert during.violations == [], str(during)
    assert (during.counts.parked, during.counts.finalized) == (ROLLBACKS, FINALIZING)
    assert listed == set(rolling)
    assert retried_in_outage == ROLLBACKS
    assert all(statuses[i] is Status.FAILED for i in rolling)
    assert all(statuses[i] is Status.FINALIZED for i in fine)
    assert report.violations == [], str(report)
    assert worker.process.poll() is None

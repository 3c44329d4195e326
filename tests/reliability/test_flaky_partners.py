"""Scenario 3: a few hundred bundles while every partner misbehaves.

A third of the bundles have their return flight sold out. Every partner path fails about one
call in seven (503, or an answer slower than the client's timeout) and answers another one in
twenty slowly, with seeded randomness. Two workers and beat (the reconciler) run as in
production. Every bundle must settle as its flights allow, with no effect doubled or leaked.
"""

from __future__ import annotations

import pytest

from process_manager.bundle import Status
from tests.reliability.stack import POOLS, Stack

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("worker_pool", POOLS)]

BUNDLES = 240
PARTNERS = ["/dead-nation-api", "/transportation-api", "/payments-api", "/receipts-api"]
FAULTS = [  # (status, delay_ms, rate): tried in this order on each call
    (503, 0, 0.10),
    (None, 2_500, 0.04),  # longer than HTTP_TIMEOUT_S=2: the client times out
    (None, 400, 0.05),  # slow, but answered
]
HEALING = {"STALE_AFTER_S": "30", "PARKED_RETRY_BASE_S": "5", "PARKED_RETRY_MAX_S": "20"}


def inject(st: Stack) -> list[str]:
    for n, path in enumerate(PARTNERS):
        for k, (status, delay_ms, rate) in enumerate(FAULTS):
            st.sim.fault(path, status=status, delay_ms=delay_ms, rate=rate, seed=10 * n + k)
    return [
        f"every partner ({', '.join(PARTNERS)}), seeded: "
        + "; ".join(
            f"{rate:.0%} {'503' if status else f'answer after {delay_ms} ms'}"
            for status, delay_ms, rate in FAULTS
        ),
        f"{BUNDLES // 3} of {BUNDLES} bundles with the return flight sold out (409)",
    ]


def test_flaky_partners_every_bundle_settles_cleanly(make_stack, record):
    st = make_stack("flaky", **HEALING)
    st.start_worker("a", concurrency=6)
    st.start_worker("b", concurrency=6)
    st.start_beat(RECONCILE_EVERY_S="5")
    faults = inject(st)
    sold_out = st.book_mix(BUNDLES)

    statuses = st.wait(timeout=420)
    st.sim.clear_faults()
    report = st.check()
    calls = st.sim.calls()
    bundles = [st.bundle(i) for i in st.submitted]
    gave_up = [b.vip_bundle_id for b in bundles if b.failure and b.failure.in_doubt]
    record(
        "3-flaky",
        "Flaky partners",
        report,
        faults=faults,
        bundles=BUNDLES,
        partner_calls=len(calls),
        faulted_calls=sum(1 for c in calls if c["fault"]),
        delayed_calls=sum(1 for c in calls if c["delay_ms"] and not c["fault"]),
        step_failures_noted=sum(b.step_failures for b in bundles),
        gave_up_in_doubt=len(gave_up),
        parked_on_the_way=sum(1 for b in bundles if b.compensation_failures),
    )

    assert report.violations == [], str(report)
    assert {i for i, s in statuses.items() if s is Status.FAILED} == sold_out | set(gave_up)
    assert report.counts.finalized == BUNDLES - len(sold_out) - len(gave_up)

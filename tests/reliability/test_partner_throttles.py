"""Scenario 13 (issue 24): the airline throttles, by `Retry-After` and by a published quota.

- 429 + `Retry-After: 2` on every flight call for 10 s while 20 bundles are sent: each step the
  airline turns away waits in the delayed queue (not in a thread, not as a failure) and comes
  back once the fleet's "not before" has passed; every bundle finalizes soon after the limit
  lifts, and no bundle calls the airline more than once per `Retry-After` meanwhile.
- The airline allows 10 calls a second (`/_sim/quota`) and the fleet knows it
  (`PARTNER_RATE_LIMITS=transportation-api=10`), 60 bundles at once on two workers: the
  fleet-wide GCRA spaces the calls so that few are refused, and the 120 flight bookings drain
  at about the quota's pace.

Beat runs, but with the suite's quiet `STALE_AFTER_S` (an hour) its reconciler takes nothing
up: what heals the bundles is the deferral alone (*reconciled* counts it, from the logs).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from process_manager.bundle import Status
from tests.reliability.backpressure import (
    FLIGHTS,
    ON_THREADS,
    THREADS,
    between,
    per_bundle,
    per_second,
    settle_seconds,
)
from tests.reliability.stack import reconciled

pytestmark = [pytest.mark.slow, ON_THREADS]

BUNDLES, OUTAGE_S, RETRY_AFTER_S = 20, 10, 2
QUOTA, QUOTA_BUNDLES = 10, 60


def test_a_429_with_retry_after_delays_every_bundle_and_costs_none(
    private_redis, make_stack, record
):
    st = make_stack("throttled", url=private_redis)
    worker = st.start_worker("a", concurrency=THREADS, exact=True)
    st.start_beat(RECONCILE_EVERY_S="2")
    st.sim.fault(FLIGHTS, status=429, rate=1.0, retry_after=RETRY_AFTER_S)
    first_send = time.time()
    for _ in range(BUNDLES):
        st.book()
    time.sleep(max(first_send + OUTAGE_S - time.time(), 0))
    st.sim.clear_faults()
    lifted = time.time()

    statuses = st.wait(timeout=90)
    report = st.check()
    flights = st.sim.calls(FLIGHTS)
    during = per_bundle(between(flights, first_send, lifted))
    settled = settle_seconds(st, st.submitted, first_send)
    budget_s = OUTAGE_S + 2 * RETRY_AFTER_S + 10
    most_calls = 2 + OUTAGE_S // RETRY_AFTER_S
    bundles = [st.bundle(i) for i in st.submitted]
    record(
        "13-throttled",
        "Flights answer 429 with Retry-After",
        report,
        faults=[
            f"every flight call answered 429 + `Retry-After: {RETRY_AFTER_S}` for {OUTAGE_S} s "
            f"from the first send, {BUNDLES} bundles sent at once",
            f"one worker `-P threads -c {THREADS}` and beat (STALE_AFTER_S an hour: the "
            "reconciler takes nothing up)",
        ],
        bundles=BUNDLES,
        finalized=sum(s is Status.FINALIZED for s in statuses.values()),
        settled_s_after_first_send=f"last {settled[-1]} (target {budget_s}), median "
        f"{settled[len(settled) // 2]}",
        flight_calls_during_limit=sum(during.values()),
        flight_calls_a_bundle_during_limit=f"at most {max(during.values(), default=0)} "
        f"(target {most_calls})",
        answered_429=sum(1 for c in flights if c["status"] == 429),
        step_failures=sum(b.step_failures for b in bundles),
        reconciled=dict(reconciled(worker)),
    )

    assert report.violations == [], str(report)
    assert report.counts.finalized == BUNDLES
    # A 429 is never a failed attempt, nor anything the reconciler had to heal.
    assert all(b.step_failures == 0 and b.last_error is None for b in bundles)
    assert not reconciled(worker)
    assert max(during.values()) <= most_calls, during
    assert settled[-1] <= budget_s, settled


def test_a_fleet_wide_quota_paces_the_airline_calls(private_redis, make_stack, record):
    st = make_stack("quota", url=private_redis, PARTNER_RATE_LIMITS=f"transportation-api={QUOTA}")
    workers = [st.start_worker(n, concurrency=THREADS, exact=True) for n in ("a", "b")]
    st.start_beat(RECONCILE_EVERY_S="2")
    st.sim.set_quota(FLIGHTS, QUOTA)
    first_send = time.time()
    for _ in range(QUOTA_BUNDLES):
        st.book()

    st.wait(timeout=120)
    report = st.check()
    # The bookings (the audit in st.check() lists the airline's tickets too: a GET).
    flights = [c for c in st.sim.calls(FLIGHTS) if c["method"] == "PUT"]
    refused = sum(1 for c in flights if c["status"] == 429)
    floor_s = 2 * QUOTA_BUNDLES / QUOTA  # two legs a bundle, at the quota's pace
    budget_s = 1.5 * floor_s + 15
    settled = settle_seconds(st, st.submitted, first_send)
    answered = [c for c in flights if c["status"] != 429]
    record(
        "13-quota",
        "A fleet-wide quota on flights",
        report,
        faults=[
            f"the airline answers 429 past {QUOTA} calls in any sliding second (`/_sim/quota`); "
            f"the fleet is told so: `PARTNER_RATE_LIMITS=transportation-api={QUOTA}`",
            f"{QUOTA_BUNDLES} bundles sent at once; two workers `-P threads -c {THREADS}` and beat",
        ],
        bundles=QUOTA_BUNDLES,
        flight_bookings_sent=len(flights),
        answered_429=f"{refused} ({refused / max(len(flights), 1):.0%} of flight bookings, "
        "target at most 10%)",
        drained_s=f"{settled[-1]} (quota's floor {floor_s:g} s, target {budget_s:g})",
        flight_calls_answered_per_second=f"peak {max(per_second(answered, first_send))}",
        # The same booking answered twice: an in-process retry after a timeout, same key.
        bookings_answered_twice=len(answered) - len({_key(c) for c in answered}),
        step_failures=sum(st.bundle(i).step_failures for i in st.submitted),
        reconciled=dict(sum((reconciled(w) for w in workers), Counter())),
    )

    assert report.violations == [], str(report)
    assert report.counts.finalized == QUOTA_BUNDLES
    assert refused <= 0.10 * len(flights), (refused, len(flights))
    assert settled[-1] <= budget_s, settled


def _key(call: dict[str, Any]) -> str:
    body = call.get("body")
    return str(body.get("idempotency_key")) if isinstance(body, dict) else ""

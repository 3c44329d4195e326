"""Scenario 8: cancellations (through the Celery door) under races and faults.

- a cancel racing each forward step while the step is held at its partner;
- a cancel whose undos are at the partner when the worker is killed (`kill -9`);
- every cancel delivered twice;
- cancels during a payments outage: the bundles wait (parked, or behind the payments circuit
  in its delayed queue), then heal into `cancelled`;
- 120 bundles, most cancelled at random moments, while every partner misbehaves.

A cancelled bundle is checked like a failed one (tests/reliability/invariants.py): nothing left
booked or charged, each undo once, and `VipBundleCancelled_v1` its last event.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import pytest

from process_manager.bundle import FINAL, Bundle, Status
from tests.reliability.stack import POOLS, Stack, log_count, reconciled

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("worker_pool", POOLS)]

SHOW, FLIGHTS = "/dead-nation-api/ticket/booking", "/transportation-api/flight-tickets"
PAYMENTS, REFUNDS = "/payments-api", "/payments-api/refunds"
OUTCOMES = {"BookingMade_v1", "BookingFailed_v1", "FlightBooked_v1", "FlightBookingFailed_v1"}


def hold_next_call(st: Stack, path: str, method: str, hold_ms: int, after: int = 0) -> None:
    """The next call (after `after` that pass) to `path` answers only after `hold_ms`."""
    if after:
        st.sim.fault(path, status=None, times=after, methods=[method])
    st.sim.fault(path, status=None, delay_ms=hold_ms, times=1, methods=[method])


def until_held(st: Stack, timeout: float = 30) -> None:
    """Until every fault rule is taken (the held calls are at the partner now)."""
    deadline = time.monotonic() + timeout
    while st.faults_left():
        assert time.monotonic() < deadline, "a held call never came"
        time.sleep(0.02)


def late_outcomes(bundle: Bundle) -> int:
    """Booking outcomes recorded while cancelling (the step was at the partner)."""
    return sum(
        1 for h in bundle.history if h.from_status is Status.CANCELLING and h.event in OUTCOMES
    )


def stream_counts(st: Stack, event_name: str) -> Counter[str]:
    """How many times each bundle has `event_name` on the events stream."""
    return Counter(
        f[b"vip_bundle_id"].decode()
        for _, f in st.redis.xrange(st.store.stream)
        if f[b"event_name"].decode() == event_name
    )


FORWARD_HOLDS = {  # step -> (path, method, calls that pass first)
    "book_show_tickets": (SHOW, "POST", 0),
    "book_flight(inbound)": (FLIGHTS, "PUT", 0),
    "book_flight(return)": (FLIGHTS, "PUT", 1),
}


def test_a_cancel_racing_each_forward_step_leaks_nothing(make_stack, record):
    # The held step must get its answer (hold < HTTP_TIMEOUT_S) and get it after the cancel is
    # stored: a wide margin on both sides, so a loaded machine still runs the race it means to.
    hold_ms = 4_000
    st = make_stack("cancel-race")
    worker = st.start_worker("w", concurrency=4, HTTP_TIMEOUT_S="10")
    held: dict[str, str] = {}
    answers: dict[str, dict[str, Any]] = {}
    for step, (path, method, after) in FORWARD_HOLDS.items():
        hold_next_call(st, path, method, hold_ms, after)
        held[step] = st.book()
        until_held(st)
        answers[step] = st.send_cancel(held[step], f"race with {step}").get(timeout=30)
        # Settled before the next hold is set: its undos (the resolve re-sends the held call)
        # must not take the next bundle's fault rules.
        st.wait([held[step]], timeout=60)
    statuses = st.wait(timeout=60)
    time.sleep(hold_ms / 1000 + 0.5)  # the held calls land before the partners are read
    report = st.check()
    late = {step: late_outcomes(st.bundle(bid)) for step, bid in held.items()}
    record(
        "8-cancel-race",
        "Cancel racing each forward step",
        report,
        faults=[
            f"one bundle held {hold_ms} ms at each forward step (simulator delay): "
            + ", ".join(held),
            "the cancel sent (Celery door) while the step is held at the partner",
        ],
        bundles=len(held),
        answers={step: a["status"] for step, a in answers.items()},
        late_outcomes_recorded=late,
        steps_skipped_as_done=log_count(worker, ": skipped, bundle"),
    )

    assert all(a["status"] == "cancelling" for a in answers.values())
    assert set(statuses.values()) == {Status.CANCELLED}, str(report)
    # Each held step booked something after the cancel: recorded, then undone.
    assert set(late.values()) == {1}, late
    assert report.violations == [], str(report)
    assert report.counts.cancelled == len(held)


def test_a_cancel_finishes_after_the_worker_is_killed_mid_undo(make_stack, record):
    hold_ms = 15_000
    st = make_stack("cancel-kill")
    first = st.start_worker("first", concurrency=10)
    finalized = [st.book() for _ in range(2)]
    st.wait(finalized, until=FINAL, timeout=60)
    hold_next_call(st, FLIGHTS, "PUT", hold_ms)  # one bundle's inbound flight at the airline
    flying = st.book()
    until_held(st)
    # Every refund is held: the cancels' undos are at the partner when the worker dies.
    refunds = 2 * (len(finalized) + 1)
    st.sim.fault(REFUNDS, status=None, delay_ms=hold_ms, times=refunds, methods=["PUT"])
    answers = [st.send_cancel(b).get(timeout=30) for b in [*finalized, flying]]
    until_held(st, timeout=60)
    held_since = time.monotonic()
    statuses_at_kill = Counter(str(s) for s in st.statuses(st.submitted).values())
    first.kill()

    # The killed messages never come back (VISIBILITY_TIMEOUT_S is an hour): only the
    # reconciler, resuming stale `cancelling` bundles from their stored state, can finish.
    second = st.start_worker("second", STALE_AFTER_S="3")
    st.start_beat(RECONCILE_EVERY_S="1")
    statuses = st.wait(timeout=120)
    time.sleep(max(0.0, hold_ms / 1000 + 1 - (time.monotonic() - held_since)))
    report = st.check()
    resumed = reconciled(second)
    record(
        "8-cancel-kill",
        "Cancel, then the worker killed mid-undo",
        report,
        faults=[
            f"{len(finalized)} finalized bundles and one held {hold_ms // 1000} s at its "
            "inbound flight, all cancelled",
            f"every refund held {hold_ms // 1000} s, kill -9 of the worker while they are held",
            "new worker (VISIBILITY_TIMEOUT_S=3600, STALE_AFTER_S=3), beat every 1 s",
        ],
        bundles=len(st.submitted),
        status_at_kill=dict(statuses_at_kill),
        reconciler=dict(resumed),
    )

    assert all(a["status"] == "cancelling" for a in answers)
    assert set(statuses.values()) == {Status.CANCELLED}, str(report)
    assert resumed["rollbacks_resumed"] >= 1
    assert report.violations == [], str(report)


def test_a_cancel_delivered_twice_is_one_cancel(make_stack, record):
    st = make_stack("cancel-twice")
    st.start_worker("w", concurrency=4)
    finalized = [st.book() for _ in range(6)]
    st.wait(finalized, until=FINAL, timeout=60)
    flying = [st.book() for _ in range(6)]  # cancelled wherever they are
    sent = [st.send_cancel(b) for b in [*finalized, *flying] for _ in range(2)]
    answers = Counter(r.get(timeout=30)["status"] for r in sent)
    statuses = st.wait(timeout=90)
    report = st.check()
    requested = stream_counts(st, "VipBundleCancellationRequested_v1")
    cancelled = stream_counts(st, "VipBundleCancelled_v1")
    record(
        "8-cancel-twice",
        "Cancel delivered twice",
        report,
        faults=[
            f"{len(finalized)} finalized bundles and {len(flying)} just booked, every cancel "
            "sent twice at once (Celery door)"
        ],
        bundles=len(st.submitted),
        answers=dict(answers),
        cancel_requests_recorded=sum(requested.values()),
    )

    assert set(statuses.values()) == {Status.CANCELLED}, str(report)
    assert set(requested.values()) == {1} and len(requested) == len(st.submitted)
    assert set(cancelled.values()) == {1} and len(cancelled) == len(st.submitted)
    assert report.violations == [], str(report)


# How long payments stay down: time for the refunds' failures to open the payments circuit
# and for the first probes to fail (1 s, then 2 s).
CANCEL_OUTAGE_S = 8


def test_cancels_during_a_payments_outage_wait_then_finish(make_stack, record):
    st = make_stack("cancel-outage", PARKED_RETRY_BASE_S="1", PARKED_RETRY_MAX_S="4")
    worker = st.start_worker("w", concurrency=4)
    ids = [st.book() for _ in range(6)]
    st.wait(ids, until=FINAL, timeout=60)
    st.sim.fault(PAYMENTS, status=503, rate=1.0)  # down until cleared
    answers = [st.send_cancel(b, "outage test").get(timeout=30) for b in ids]
    # The refunds fail until the payments circuit opens for the whole fleet (issue 24); then
    # they wait in payments' delayed queue (`cancelling`) or, if their retries ran out first,
    # park (`compensation_failed`). Either way nothing ends and nothing is refunded.
    time.sleep(CANCEL_OUTAGE_S)
    waited = [st.bundle(b) for b in ids]
    refunded = [c for c in st.sim.calls(REFUNDS) if c["status"] < 300]

    statuses, healed_in_s = st.heal()
    report = st.check()
    bundles = [st.bundle(b) for b in ids]
    record(
        "8-cancel-outage",
        "Cancel during a payments outage",
        report,
        faults=[
            f"{len(ids)} finalized bundles cancelled while payments answer 503 to every call "
            f"(for {CANCEL_OUTAGE_S} s after the cancels were answered)",
            "payments back, then a real celery beat (RECONCILE_EVERY_S=1, PARKED_RETRY_BASE_S=1)",
        ],
        bundles=len(ids),
        status_during_outage=dict(Counter(str(b.status) for b in waited)),
        healed_after_payments_back_s=round(healed_in_s, 1),
        compensation_failures=sum(b.compensation_failures for b in bundles),
    )

    assert all(a["status"] == "cancelling" for a in answers)
    waiting = {Status.CANCELLING, Status.COMPENSATION_FAILED}
    assert all(b.status in waiting and b.cancellation for b in waited), waited
    assert refunded == []
    assert set(statuses.values()) == {Status.CANCELLED}, str(report)
    # A parked cancellation resumes as a cancellation, never as a rollback.
    parked = [b for b in bundles if b.compensation_failures]
    assert all("CancellationResumed" in [h.event for h in b.history] for b in parked)
    assert all("RollbackResumed" not in [h.event for h in b.history] for b in bundles)
    assert report.violations == [], str(report)
    assert worker.process.poll() is None


BUNDLES, CANCELLED_SHARE = 120, 0.7
PARTNERS = ["/dead-nation-api", "/transportation-api", "/payments-api", "/receipts-api"]
FAULTS = [  # (status, delay_ms, rate): tried in this order on each call
    (503, 0, 0.08),
    (None, 2_500, 0.03),  # longer than HTTP_TIMEOUT_S=2: the client times out, in doubt
    (None, 400, 0.05),  # slow, but answered
]


def test_bundles_cancelled_at_random_moments_under_partner_faults(make_stack, record):
    st = make_stack(
        "cancel-random", STALE_AFTER_S="15", PARKED_RETRY_BASE_S="3", PARKED_RETRY_MAX_S="10"
    )
    st.start_worker("a", concurrency=4)
    st.start_worker("b", concurrency=4)
    st.start_beat(RECONCILE_EVERY_S="3")
    for n, path in enumerate(PARTNERS):
        for k, (status, delay_ms, rate) in enumerate(FAULTS):
            st.sim.fault(path, status=status, delay_ms=delay_ms, rate=rate, seed=10 * n + k)
    rng = random.Random(8)
    st.book_mix(BUNDLES)
    # Cancels at random moments over the next few seconds: before, during and after steps.
    chosen = rng.sample(st.submitted, int(BUNDLES * CANCELLED_SHARE))
    moments = sorted((rng.uniform(0, 6), b) for b in chosen)
    start, sent = time.monotonic(), {}
    for at, bundle_id in moments:
        time.sleep(max(0.0, start + at - time.monotonic()))
        sent[bundle_id] = st.send_cancel(bundle_id, f"random at {at:.1f} s")
    replies: dict[str, str] = {}
    for bundle_id, result in sent.items():
        try:
            replies[bundle_id] = result.get(timeout=60)["status"]
        except Exception as exc:  # the door's refusal, rebuilt from the result backend
            replies[bundle_id] = f"refused: {exc}"

    statuses = st.wait(timeout=420)
    st.sim.clear_faults()
    time.sleep(3)  # slow calls still under way land before the partners are read
    report = st.check()
    bundles = {b: st.bundle(b) for b in st.submitted}
    refused = {b for b, r in replies.items() if r.startswith("refused")}
    record(
        "8-cancel-random",
        "Bundles cancelled at random moments, partners flaky",
        report,
        faults=[
            f"every partner ({', '.join(PARTNERS)}), seeded: "
            + "; ".join(
                f"{rate:.0%} {'503' if status else f'answer after {delay_ms} ms'}"
                for status, delay_ms, rate in FAULTS
            ),
            f"{BUNDLES // 3} of {BUNDLES} bundles with the return flight sold out (409)",
            f"{len(chosen)} bundles cancelled at random moments within 6 s of booking",
        ],
        bundles=BUNDLES,
        cancels_sent=len(sent),
        cancels_refused_already_failed=len(refused),
        cancelled_from=dict(
            Counter(str(b.cancellation.from_status) for b in bundles.values() if b.cancellation)
        ),
        late_outcomes_recorded=sum(late_outcomes(b) for b in bundles.values()),
        parked_on_the_way=sum(1 for b in bundles.values() if b.compensation_failures),
    )

    assert report.violations == [], str(report)
    for bundle_id, reply in replies.items():
        if bundle_id in refused:
            assert "already failed" in reply and statuses[bundle_id] is Status.FAILED
        else:
            assert statuses[bundle_id] is Status.CANCELLED, (bundle_id, reply)
    untouched = set(st.submitted) - set(chosen)
    assert all(statuses[b] in (Status.FINALIZED, Status.FAILED) for b in untouched)
    assert report.counts.cancelled == len(chosen) - len(refused)

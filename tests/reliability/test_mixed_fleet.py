"""Scenario 12: a deploy on any day. Workers of the previous release (deploy/previous-release,
built from this clone's history: previous_release.py) and of this code take the same queues
on the same Redis database, with bundles in flight through every state, partners failing 20%
of calls, kill -9 on either side; then the first side is stopped and the other finishes.

- upgrade: the previous release runs first (its worker and beat), this code joins, then the
  previous release is stopped;
- rollback: this code runs first and writes documents of the new shape, the previous release
  joins, then this code is stopped and the previous release finishes every bundle.

Every invariant 0 and `vip-bundles audit` clean after both. The drill (process_manager/
versions.py): the bundles this code created keep `created_by_release` through the previous
release's rewrites (that release drops fields it does not know from the document; the creator
is kept beside it), and `moved_by_release` says this release exactly when this release wrote
the document last.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from process_manager import versions
from process_manager.bundle import Status
from tests.reliability import previous_release
from tests.reliability.previous_release import PreviousRelease
from tests.reliability.stack import Stack

pytestmark = pytest.mark.slow

BUNDLES = 60  # booked in two halves: before the second side joins, and while both run
CANCELLED = 0.3  # share of the bundles cancelled at random moments
FAULT_RATE = 0.2
PARTNERS = ["/dead-nation-api", "/transportation-api", "/payments-api", "/receipts-api"]


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> PreviousRelease:
    return previous_release.build(tmp_path_factory.mktemp("previous-release"))


def cancel_some(st: Stack, ids: list[str], rng: random.Random, within_s: float) -> int:
    chosen = rng.sample(ids, int(len(ids) * CANCELLED))
    moments = sorted((rng.uniform(0, within_s), b) for b in chosen)
    start = time.monotonic()
    for at, bundle_id in moments:
        time.sleep(max(0.0, start + at - time.monotonic()))
        st.send_cancel(bundle_id, f"mixed fleet, at {at:.1f} s")
    return len(chosen)


def statuses_now(st: Stack) -> dict[str, int]:
    return dict(Counter(str(s) for s in st.statuses(st.submitted).values()))


def drill(st: Stack) -> dict[str, int]:
    """Who created and last moved each bundle, read two ways: raw (the document and the
    creator kept beside it, as stored) and through this code's reader."""
    figures: Counter[str] = Counter()
    for bundle_id in st.submitted:
        raw = st.redis.hgetall(st.store._bundle_key(bundle_id))
        doc = json.loads(raw[b"doc"])
        kept = raw.get(b"created_by", b"").decode() or None
        read = st.bundle(bundle_id)
        new_shape = doc.get("schema_version") == versions.DOCUMENT
        figures["created_by_this_release" if kept else "created_by_previous_release"] += 1
        figures["last_moved_by_this_release" if new_shape else "last_moved_by_previous"] += 1
        if kept and not new_shape:
            figures["created_here_rewritten_by_previous"] += 1
        # The reader's view agrees with what is stored, whoever wrote last.
        assert read.created_by_release == kept, bundle_id
        assert read.moved_by_release == (versions.RELEASE if new_shape else None), bundle_id
        assert read.schema_version == (versions.DOCUMENT if new_shape else 1), bundle_id
        if new_shape:
            assert doc["moved_by_release"] == versions.RELEASE
    return dict(figures)


@pytest.mark.parametrize("direction", ["upgrade", "rollback"])
def test_a_mixed_fleet_of_the_previous_release_and_this_one(
    direction: str, make_stack, record, previous: PreviousRelease, tmp_path: Path
):
    first, second = (previous, None) if direction == "upgrade" else (None, previous)
    name = {None: "this", previous: f"previous-{previous.short}"}
    st = make_stack(
        f"mixed-{direction}", STALE_AFTER_S="8", PARKED_RETRY_BASE_S="2", PARKED_RETRY_MAX_S="6"
    )
    rng = random.Random(12)
    for n, path in enumerate(PARTNERS):
        st.sim.fault(path, status=503, rate=FAULT_RATE, seed=n)
    # Payments down for the first phase: rollbacks and cancellations park.
    st.sim.fault("/payments-api", status=503, rate=1.0, seed=99)

    # 1. The first side alone.
    st.start_worker(f"{name[first]}-a", release=first)
    st.start_beat(release=first, RECONCILE_EVERY_S="2")
    st.book_mix(BUNDLES // 2)
    cancels = cancel_some(st, list(st.submitted), rng, within_s=4)
    time.sleep(4)
    at_join = statuses_now(st)

    # 2. The second side joins; both take the same queues. Kill -9 on each side mid-flight.
    st.start_worker(f"{name[second]}-a", release=second)
    half = set(st.submitted)
    st.book_mix(BUNDLES - BUNDLES // 2)
    cancels += cancel_some(st, [b for b in st.submitted if b not in half], rng, within_s=3)
    st.workers[0].kill()
    st.start_worker(f"{name[first]}-b", release=first)
    st.sim.clear_faults()  # payments back; the 20% faults go on
    for n, path in enumerate(PARTNERS):
        st.sim.fault(path, status=503, rate=FAULT_RATE, seed=10 + n)
    time.sleep(3)
    at_kill = statuses_now(st)
    st.workers[1].kill()
    st.start_worker(f"{name[second]}-b", release=second)
    time.sleep(5)

    # 3. The first side stopped (its beat too); the second side finishes alone.
    for beat in st.beats:
        beat.terminate()
        beat.wait()
    st.workers[2].stop()
    at_stop = statuses_now(st)
    st.start_beat(release=second, RECONCILE_EVERY_S="2")
    time.sleep(5)
    statuses, healed_in_s = st.heal(timeout=240)
    time.sleep(2)  # calls still under way land before the partners are read
    report = st.check()
    figures = drill(st)
    bundles = [st.bundle(b) for b in st.submitted]
    title = {
        "upgrade": f"Upgrade: previous release ({previous.short}) first, this one joins",
        "rollback": f"Rollback: this release first, the previous one ({previous.short}) takes over",
    }[direction]
    record(
        f"12-mixed-{direction}",
        title,
        report,
        faults=[
            f"every partner answers 503 to {FAULT_RATE:.0%} of calls (seeded), throughout",
            "payments down until the second side has joined (rollbacks and cancels park)",
            f"{cancels} of {BUNDLES} bundles cancelled at random moments; a third sold out",
            f"kill -9 of a worker of {name[first]}, then of one of {name[second]}, mid-flight",
            f"{name[first]} stopped (worker and beat); {name[second]} alone with its own beat",
        ],
        bundles=BUNDLES,
        statuses_when_second_side_joined=at_join,
        statuses_at_second_kill=at_kill,
        statuses_when_first_side_stopped=at_stop,
        parked_on_the_way=sum(1 for b in bundles if b.compensation_failures),
        healed_after_faults_cleared_s=round(healed_in_s, 1),
        **figures,
    )

    assert report.violations == [], str(report)
    assert set(statuses.values()) <= {Status.FINALIZED, Status.FAILED, Status.CANCELLED}
    # Bundles were in flight through every state when the fleet was mixed.
    seen = {*at_join, *at_kill, *at_stop}
    assert {"rolling_back", "compensation_failed"} <= seen or "cancelling" in seen, seen
    assert any(b.compensation_failures for b in bundles)  # some parked, and were taken up
    # The drill: both releases created bundles, and this release's creations kept their
    # creator through the previous release's rewrites.
    assert figures.get("created_by_this_release", 0) > 0
    assert figures.get("created_by_previous_release", 0) > 0
    if direction == "rollback":
        assert figures.get("created_here_rewritten_by_previous", 0) > 0

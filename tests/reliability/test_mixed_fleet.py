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
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from redis import Redis

from adapters.store import BundleStore
from process_manager import versions
from process_manager.bundle import Status
from tests.reliability import previous_release
from tests.reliability.previous_release import PreviousRelease
from tests.reliability.stack import Stack

pytestmark = pytest.mark.slow

BUNDLES = 60  # in three batches: first side alone, both, just before the first one stops
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


class Watch:
    """Samples every bundle's status (every 0.3 s, in a thread of its own) while the fleet is
    mixed: how many bundles were seen in each status then."""

    def __init__(self, st: Stack) -> None:
        self.seen: dict[str, set[str]] = defaultdict(set)
        self._st, self._stop = st, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store = BundleStore(Redis.from_url(self._st.redis_url))
        while not self._stop.wait(0.3):
            for bundle_id in list(self._st.submitted):
                if (bundle := store.get(bundle_id)) is not None:
                    self.seen[str(bundle.status)].add(bundle_id)
        store.redis.close()

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {status: len(ids) for status, ids in sorted(self.seen.items())}


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
    name = {None: "this", previous: f"previous-{previous.short}"}  # in worker names
    label = {None: f"this release ({versions.RELEASE})", previous: f"{previous.short}"}
    st = make_stack(
        f"mixed-{direction}", STALE_AFTER_S="8", PARKED_RETRY_BASE_S="2", PARKED_RETRY_MAX_S="6"
    )
    rng = random.Random(12)
    for n, path in enumerate(PARTNERS):
        st.sim.fault(path, status=503, rate=FAULT_RATE, seed=n)
    # Payments down until the first side is stopped: rollbacks and cancellations park, and
    # parked bundles cross the handover. Every call takes a while, so that bundles are seen in
    # every status while the fleet is mixed.
    st.sim.fault("/payments-api", status=503, rate=1.0, seed=99)
    st.sim.set_latency(150, 100)
    batch = BUNDLES // 3

    # 1. The first side alone.
    st.start_worker(f"{name[first]}-a", release=first)
    st.start_beat(release=first, RECONCILE_EVERY_S="2")
    st.book_mix(batch)
    cancels = cancel_some(st, list(st.submitted), rng, within_s=3)

    # 2. The second side joins; both take the same queues. Kill -9 on each side mid-flight.
    st.start_worker(f"{name[second]}-a", release=second)
    watch = Watch(st)
    before = set(st.submitted)
    st.book_mix(batch)
    cancels += cancel_some(st, [b for b in st.submitted if b not in before], rng, within_s=2)
    st.workers[0].kill()
    st.start_worker(f"{name[first]}-b", release=first)
    st.workers[1].kill()
    st.start_worker(f"{name[second]}-b", release=second)
    before = set(st.submitted)
    st.book_mix(BUNDLES - 2 * batch)  # in flight when the first side stops
    cancels += cancel_some(st, [b for b in st.submitted if b not in before], rng, within_s=1)

    # 3. The first side stopped (its beat too); the second side finishes alone, with its beat.
    for beat in st.beats:
        beat.terminate()
        beat.wait()
    st.workers[2].stop()
    seen_while_mixed = watch.stop()
    at_stop = dict(Counter(str(s) for s in st.statuses(st.submitted).values()))
    st.start_beat(release=second, RECONCILE_EVERY_S="2")
    st.sim.clear_faults()  # payments back; the 20% go on until everything has settled
    for n, path in enumerate(PARTNERS):
        st.sim.fault(path, status=503, rate=FAULT_RATE, seed=10 + n)
    alone_at = time.monotonic()
    st.wait(timeout=240)
    settled_alone_s = time.monotonic() - alone_at
    statuses, _ = st.heal(timeout=120)  # faults cleared: nothing left to do, or the last
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
            "payments down until the first side is stopped (rollbacks and cancels park)",
            f"{BUNDLES} bundles in three batches (alone, mixed, just before the handover); "
            f"{cancels} cancelled at random moments; a third sold out",
            f"kill -9 of a worker of {label[first]}, then of one of {label[second]}, mid-flight",
            f"{label[first]} stopped (worker and beat); {label[second]} alone with its beat",
        ],
        bundles=BUNDLES,
        bundles_seen_in_each_status_while_mixed=seen_while_mixed,
        statuses_when_first_side_stopped=at_stop,
        parked_on_the_way=sum(1 for b in bundles if b.compensation_failures),
        seconds_to_settle_after_the_first_side_stopped=round(settled_alone_s, 1),
        **figures,
    )

    assert report.violations == [], str(report)
    assert set(statuses.values()) <= {Status.FINALIZED, Status.FAILED, Status.CANCELLED}
    # Bundles were in flight through every state while the fleet was mixed.
    undoing = {"rolling_back", "cancelling", "compensation_failed"}
    assert undoing <= set(seen_while_mixed), seen_while_mixed
    assert {"initialized", "booking_made", "inbound_booked"} & set(seen_while_mixed)
    # ... and some were still in flight or parked when the first side stopped.
    assert set(at_stop) - {"finalized", "failed", "cancelled"}, at_stop
    assert any(b.compensation_failures for b in bundles)  # some parked, and were taken up
    # The drill: both releases created bundles, and this release's creations kept their
    # creator through the previous release's rewrites.
    assert figures.get("created_by_this_release", 0) > 0
    assert figures.get("created_by_previous_release", 0) > 0
    if direction == "rollback":
        assert figures.get("created_here_rewritten_by_previous", 0) > 0

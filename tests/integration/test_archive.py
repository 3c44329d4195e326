"""The archive (PostgreSQL) and retention against the real Redis and PostgreSQL: moving is
crash-safe, leaves a tombstone, and the finder sees through both stores."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from adapters.archive import ArchiveUnavailable, BundleArchive, migrations
from adapters.archiver import archive_batch, archive_due
from adapters.finder import BundleFinder
from adapters.store import BundleStore
from adapters.store_retention import BundleArchived
from process_manager import saga
from process_manager.audit import Finding, Kind
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tests.factories import fresh_bundle

DAY = 86_400.0
RETENTION = 7 * DAY


@pytest.fixture
def archive(archive_url: str) -> Iterator[BundleArchive]:
    target = BundleArchive(archive_url)
    with psycopg.connect(archive_url, autocommit=True) as conn:
        conn.execute("TRUNCATE bundles")
    yield target
    target.close()


def finalized(store: BundleStore, email: str | None = None, tenant: str | None = None) -> Bundle:
    """A bundle booked end to end through the store's transitions."""
    fresh = fresh_bundle(**({"customer_email": email} if email else {}))
    if tenant is not None:
        fresh = fresh.model_copy(update={"tenant": tenant})
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    steps = [
        lambda b: saga.booking_made(b, [str(uuid.uuid4()) for _ in b.passengers]),
        lambda b: saga.flight_booked(b, Leg.INBOUND, [str(uuid.uuid4())]),
        lambda b: saga.flight_booked(b, Leg.RETURN, [str(uuid.uuid4())]),
        saga.finalized,
    ]
    for step in steps:
        bundle = store.apply(bundle.vip_bundle_id, step).bundle
    assert bundle.status is Status.FINALIZED
    return bundle


def keys_of(store: BundleStore, b: Bundle) -> dict[str, object]:
    r = store.redis
    return {
        "hash": r.exists(store._bundle_key(b.vip_bundle_id)),
        "status": r.zscore(store.status_key(b.status), b.vip_bundle_id),
        "booking": r.hget(store._booking_index(), b.booking_id),
        "email": r.zscore(store._email_index(b.customer_email), b.vip_bundle_id),
        "correlation": r.zscore(store._correlation_index(b.correlation_id), b.vip_bundle_id),
    }


def test_init_creates_the_schema_and_twice_is_harmless(archive: BundleArchive):
    assert archive.init() == []  # the run's fixture applied them already
    assert archive.schema_version() == max(v for v, _, _ in migrations())


def test_a_bundle_settled_past_retention_moves_with_every_index_entry(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store, email="Ann.Archive@Example.com")
    settled = bundle.status_since().timestamp()
    assert archive_due(store, archive, settled + RETENTION - 1, RETENTION, 100).removed == 0
    done = archive_due(store, archive, settled + RETENTION + 1, RETENTION, 100)
    assert (done.written, done.removed, done.kept) == (1, 1, 0)

    assert not any(keys_of(store, bundle).values())  # nothing left in Redis...
    assert store.tombstone(bundle.vip_bundle_id) == bundle.request_digest()  # ...but this
    found = BundleFinder(store, archive)
    got = found.get(bundle.vip_bundle_id)
    assert got is not None and got.archived_at is not None
    assert got.model_dump() == bundle.model_dump()  # document and history, as they were
    for text in (bundle.vip_bundle_id, bundle.booking_id, "ann.archive@EXAMPLE.com"):
        assert [b.vip_bundle_id for b in found.search(text)] == [bundle.vip_bundle_id]
    assert bundle.vip_bundle_id in [b.vip_bundle_id for b in found.list(Status.FINALIZED)]
    assert found.count(Status.FINALIZED) == store.count(Status.FINALIZED) + 1
    assert store.archived_counts()[Status.FINALIZED] == 1
    assert store.counts()[Status.FINALIZED] == store.count(Status.FINALIZED) + 1


def test_pages_of_a_final_status_continue_into_the_archive(
    store: BundleStore, archive: BundleArchive
):
    old = [finalized(store) for _ in range(3)]
    cutoff = max(b.status_since().timestamp() for b in old)
    archive_due(store, archive, cutoff + RETENTION, RETENTION, 100)
    live = [finalized(store) for _ in range(2)]
    found = BundleFinder(store, archive)
    ids = [b.vip_bundle_id for b in found.list(Status.FINALIZED, 0, 10)]
    assert ids == [b.vip_bundle_id for b in reversed(live)] + [
        b.vip_bundle_id for b in reversed(old)
    ]
    assert [b.vip_bundle_id for b in found.list(Status.FINALIZED, 1, 2)] == ids[1:3]
    assert found.count(Status.FINALIZED) == 5


def test_a_bundle_touched_after_it_was_read_stays_in_redis(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store)
    snapshot = store.snapshot([bundle.vip_bundle_id])
    archive.put_many(snapshot)
    finding = Finding(
        vip_bundle_id=bundle.vip_bundle_id,
        status=bundle.status,
        kind=Kind.FLIGHT_TICKET_CANCELLED,
        key="flight_ticket_cancelled:t1",
        description="cancelled at the partner",
        record={"ticket_id": "t1"},
    )
    store.apply(bundle.vip_bundle_id, lambda b: saga.drift_detected(b, finding))
    assert store.remove_archived(snapshot) == [0]  # the version moved on: kept
    assert store.get(bundle.vip_bundle_id) is not None
    # Briefly in both: the live one is what the doors see, and no list shows it twice.
    found = BundleFinder(store, archive)
    assert found.get(bundle.vip_bundle_id).archived_at is None
    listed = [b.vip_bundle_id for b in found.list(Status.FINALIZED, 0, 50)]
    assert listed.count(bundle.vip_bundle_id) == 1
    # The next pass archives the new version (with its drift finding).
    settled = bundle.status_since().timestamp()
    assert archive_due(store, archive, settled + RETENTION + 1, RETENTION, 100).removed == 1
    assert [d.key for d in archive.get(bundle.vip_bundle_id).drift] == [finding.key]


def test_a_crash_between_commit_and_removal_is_finished_by_the_next_pass(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store)
    archive.put_many(store.snapshot([bundle.vip_bundle_id]))  # ...and the archiver dies here
    assert store.get(bundle.vip_bundle_id) is not None
    settled = bundle.status_since().timestamp()
    done = archive_batch(store, archive, settled + RETENTION + 1, RETENTION, 100)
    assert done.removed == 1 and store.get(bundle.vip_bundle_id) is None
    assert archive.get(bundle.vip_bundle_id) is not None
    assert store.remove_archived([bundle]) == [2]  # a third try: gone already, harmless


def test_with_the_archive_down_nothing_leaves_redis(store: BundleStore):
    bundle = finalized(store)
    down = BundleArchive("postgresql://postgres@127.0.0.1:1/nowhere", timeout_s=1)
    settled = bundle.status_since().timestamp()
    with pytest.raises(ArchiveUnavailable):
        archive_due(store, down, settled + RETENTION + 1, RETENTION, 100)
    assert all(v for k, v in keys_of(store, bundle).items())
    assert store.tombstone(bundle.vip_bundle_id) is None
    down.close()


def test_the_same_id_after_archiving_is_refused_by_the_creation_script(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store)
    archive_due(store, archive, bundle.status_since().timestamp() + RETENTION, RETENTION, 9)
    again = bundle.model_copy(update={"version": 0, "history": []})
    with pytest.raises(BundleArchived) as archived:
        store.create(again, saga.initialized(again))
    assert archived.value.digest == bundle.request_digest()
    assert store.get(bundle.vip_bundle_id) is None  # nothing created


def test_an_archived_bundle_restored_is_live_again_with_its_indexes(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store)
    archive_due(store, archive, bundle.status_since().timestamp() + RETENTION, RETENTION, 9)
    archived = archive.get(bundle.vip_bundle_id)
    assert store.restore(archived)
    assert not store.restore(archived)  # never over a live bundle
    archive.mark_restored(bundle.vip_bundle_id)
    assert all(v for v in keys_of(store, bundle).values())
    assert store.tombstone(bundle.vip_bundle_id) is None
    assert store.get(bundle.vip_bundle_id).model_dump() == bundle.model_dump()
    assert store.archived_counts()[Status.FINALIZED] == 0  # counted live again
    assert archive.list(Status.FINALIZED) == []  # a restored row is not listed
    # It settles again (cancelled) and is archived again: the row is replaced.
    cancelled = store.apply(bundle.vip_bundle_id, lambda b: saga.cancel(b, "changed plans"))
    assert cancelled.bundle.status is Status.CANCELLING


def test_memory_estimates_what_settled_bundles_hold(store: BundleStore):
    for _ in range(3):
        finalized(store)
    memory = store.memory(sample=10)
    assert memory.used > 0
    assert memory.settled_bundles >= 3
    assert memory.per_settled_bundle > 500  # a finalized document with its history
    assert memory.settled_bytes == memory.per_settled_bundle * memory.settled_bundles


def test_a_tenants_bundle_leaves_its_tenant_index_and_its_pages_continue_into_the_archive(
    store: BundleStore, archive: BundleArchive
):
    mine = [finalized(store, tenant="shop-a") for _ in range(3)]
    theirs = finalized(store, tenant="shop-b")
    old, live = mine[:2], mine[2]
    moved = store.snapshot([b.vip_bundle_id for b in [*old, theirs]])
    archive.put_many(moved)  # what archive_batch does, for these bundles only
    assert store.remove_archived(moved) == [1, 1, 1]
    for b in [*old, theirs]:
        assert store.redis.zscore(store.status_key(b.status, b.tenant), b.vip_bundle_id) is None
    assert store.redis.zscore(store.status_key(live.status, "shop-a"), live.vip_bundle_id)

    found = BundleFinder(store, archive)
    assert found.count(Status.FINALIZED, tenant="shop-a") == 3
    page = found.list(Status.FINALIZED, 0, 10, tenant="shop-a")
    assert page[0].vip_bundle_id == live.vip_bundle_id  # the live one first
    assert {b.vip_bundle_id for b in page} == {b.vip_bundle_id for b in mine}
    assert found.count(Status.FINALIZED, tenant="shop-b") == 1


def test_the_same_id_from_another_tenant_is_a_different_request_after_archiving(
    store: BundleStore, archive: BundleArchive
):
    bundle = finalized(store, tenant="shop-a")
    archive.put_many([bundle])
    assert store.remove_archived(store.snapshot([bundle.vip_bundle_id])) == [1]
    assert store.tombstone(bundle.vip_bundle_id) == bundle.request_digest()
    other = bundle.model_copy(update={"tenant": "shop-b"})
    assert other.request_digest() != bundle.request_digest()
    assert bundle.model_copy(update={"tenant": None}).request_digest() != bundle.request_digest()

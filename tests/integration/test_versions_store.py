"""Schema versions in the stores, against the real Redis and PostgreSQL: what the previous
release leaves is read, what a newer one wrote is left untouched (not even a start counted)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest

from adapters.archive import BundleArchive
from adapters.store import BundleStore
from process_manager import saga, versions
from process_manager.bundle import Bundle, Status
from process_manager.messages import Step
from process_manager.versions import NewerSchema
from tests.factories import fresh_bundle
from tests.integration.test_archive import finalized
from tests.unit.test_versions import as_previous_release_writes


def created(store: BundleStore) -> Bundle:
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    return bundle


def rewrite_as_previous_release(store: BundleStore, bundle: Bundle) -> None:
    """What the previous release's transition script writes: version, status, doc and round
    (and nothing else of the hash); its document lacks every field it does not know."""
    store.redis.hset(
        store._bundle_key(bundle.vip_bundle_id),
        mapping={
            "version": bundle.version + 1,
            "doc": json.dumps(
                {**as_previous_release_writes(bundle), "version": bundle.version + 1}
            ),
        },
    )


def test_the_creator_survives_a_previous_release_rewrite(store: BundleStore):
    bundle = created(store)
    assert bundle.created_by_release == versions.RELEASE
    rewrite_as_previous_release(store, bundle)

    read = store.require(bundle.vip_bundle_id)
    assert read.schema_version == 1
    assert read.created_by_release == versions.RELEASE  # kept beside the document
    assert read.moved_by_release is None  # a release that records none moved it last
    assert [b.created_by_release for b in store.many([bundle.vip_bundle_id])] == [versions.RELEASE]

    moved = store.apply(read.vip_bundle_id, lambda b: saga.booking_made(b, ["t1", "t2"])).bundle
    again = store.require(bundle.vip_bundle_id)
    assert again == moved.model_copy(update={"starts": again.starts})
    assert (again.schema_version, again.created_by_release, again.moved_by_release) == (
        versions.DOCUMENT,
        versions.RELEASE,
        versions.RELEASE,
    )


def written_by_a_newer_release(store: BundleStore, bundle: Bundle) -> dict[bytes, bytes]:
    doc = {
        **json.loads(bundle.model_dump_json()),
        "schema_version": versions.DOCUMENT + 1,
        "a_field_of_the_future": [1, 2],
    }
    key = store._bundle_key(bundle.vip_bundle_id)
    store.redis.hset(key, mapping={"doc": json.dumps(doc), "schema": versions.DOCUMENT + 1})
    return store.redis.hgetall(key)


def test_a_newer_document_is_left_untouched_and_no_start_is_counted(store: BundleStore):
    bundle = created(store)
    before = written_by_a_newer_release(store, bundle)

    with pytest.raises(NewerSchema):
        store.get(bundle.vip_bundle_id)
    with pytest.raises(NewerSchema) as caught:
        store.start(bundle.vip_bundle_id, Step.SHOW.value, [Status.INITIALIZED.value])
    assert caught.value.bundle_id == bundle.vip_bundle_id
    with pytest.raises(NewerSchema):
        store.apply(bundle.vip_bundle_id, lambda b: saga.booking_made(b, ["t1"]))
    assert store.many([bundle.vip_bundle_id]) == []  # lists leave it to the newer doors
    assert store.redis.hgetall(store._bundle_key(bundle.vip_bundle_id)) == before


@pytest.fixture
def archive(archive_url: str) -> Iterator[BundleArchive]:
    target = BundleArchive(archive_url)
    target.init()
    with psycopg.connect(archive_url, autocommit=True) as conn:
        conn.execute("TRUNCATE bundles")
    yield target
    target.close()
    with psycopg.connect(archive_url, autocommit=True) as conn:
        conn.execute("TRUNCATE bundles")  # a newer release's row is no other test's business


def test_archive_rows_say_their_version_and_a_newer_one_is_left_out(
    store: BundleStore, archive: BundleArchive
):
    current, older, newer = (finalized(store) for _ in range(3))
    archive.put_many([current, older, newer])
    with psycopg.connect(archive.url, autocommit=True) as conn:
        # As the previous release archives: a document without the fields it does not know.
        conn.execute(
            "UPDATE bundles SET doc = %s::jsonb - 'history' - 'drift' WHERE vip_bundle_id = %s",
            (json.dumps(as_previous_release_writes(older)), older.vip_bundle_id),
        )
        conn.execute(
            "UPDATE bundles SET doc = doc || '{\"schema_version\": 3}'::jsonb"
            " WHERE vip_bundle_id = %s",
            (newer.vip_bundle_id,),
        )
        rows = dict(conn.execute("SELECT vip_bundle_id, schema_version FROM bundles").fetchall())
    assert rows == {current.vip_bundle_id: 2, older.vip_bundle_id: 1, newer.vip_bundle_id: 3}

    listed = {b.vip_bundle_id: b for b in archive.list(Status.FINALIZED)}
    assert set(listed) == {current.vip_bundle_id, older.vip_bundle_id}
    assert listed[older.vip_bundle_id].moved_by_release is None
    assert listed[current.vip_bundle_id].moved_by_release == versions.RELEASE
    with pytest.raises(NewerSchema):
        archive.get(newer.vip_bundle_id)

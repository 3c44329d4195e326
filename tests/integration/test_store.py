"""The Redis store against a real Redis: atomic, version-checked transitions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis import Redis

from adapters.store import BundleStore
from process_manager import saga
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tests.factories import fresh_bundle


@pytest.fixture
def store(redis_url: str) -> Iterator[BundleStore]:
    prefix = f"vip-bundles-store-test-{uuid.uuid4().hex[:8]}:"
    client = Redis.from_url(redis_url)
    yield BundleStore(client, prefix=prefix)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def created(store: BundleStore) -> Bundle:
    fresh = fresh_bundle()
    bundle, is_new = store.create(fresh, saga.initialized(fresh))
    assert is_new
    return bundle


def stream_names(store: BundleStore, bundle_id: str) -> list[str]:
    return [
        json.loads(fields[b"data"])["header"]["event_name"]
        for _, fields in store.redis.xrange(store.stream)
        if fields[b"vip_bundle_id"].decode() == bundle_id
    ]


def test_create_is_once_per_id(store: BundleStore):
    bundle = created(store)
    again, is_new = store.create(bundle, saga.initialized(bundle))
    assert not is_new
    assert again == bundle
    assert stream_names(store, bundle.vip_bundle_id) == ["VipBundleInitialized_v1"]


def test_a_stale_version_is_refused_and_nothing_is_written(store: BundleStore):
    bundle = created(store)
    first = saga.apply(bundle, saga.booking_made(bundle, ["t1", "t2"]))
    assert store.save(bundle, first, None)
    rival = saga.apply(bundle, saga.booking_failed(bundle, "late"))
    assert not store.save(bundle, rival, saga.booking_failed(bundle, "late"))
    stored = store.require(bundle.vip_bundle_id)
    assert stored.status is Status.BOOKING_MADE
    assert stored.failure is None
    assert "BookingFailed_v1" not in stream_names(store, bundle.vip_bundle_id)


def test_racing_workers_each_apply_once(store: BundleStore):
    bundle = created(store)
    b = store.apply(bundle.vip_bundle_id, lambda b: saga.booking_made(b, ["t1", "t2", "t3"]))
    b = store.apply(
        b.bundle.vip_bundle_id, lambda b: saga.flight_booking_failed(b, Leg.INBOUND, "409")
    )
    tickets = ["t1", "t2", "t3"] * 4  # every refund recorded by four workers at once

    def refund(ticket: str) -> bool:
        applied = store.apply(bundle.vip_bundle_id, lambda b: saga.ticket_refunded(b, ticket))
        return applied.event is not None

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(refund, tickets))
    assert sum(wins) == 3
    stored = store.require(bundle.vip_bundle_id)
    assert sorted(stored.refunded_ticket_ids) == ["t1", "t2", "t3"]
    assert stream_names(store, bundle.vip_bundle_id).count("TicketRefunded_v1") == 3
    assert [h.event for h in stored.history].count("TicketRefunded_v1") == 3


def test_status_indexes_follow_transitions(store: BundleStore):
    bundle = created(store)
    assert store.count(Status.INITIALIZED) == 1
    store.apply(bundle.vip_bundle_id, lambda b: saga.booking_failed(b, "sold out"))
    store.apply(bundle.vip_bundle_id, saga.failed)
    assert store.count(Status.INITIALIZED) == 0
    assert store.count(Status.ROLLING_BACK) == 0
    assert [b.vip_bundle_id for b in store.list(Status.FAILED)] == [bundle.vip_bundle_id]
    assert store.stale(Status.FAILED, unchanged_for_s=3600) == []
    assert store.stale(Status.FAILED, unchanged_for_s=-1) == [bundle.vip_bundle_id]


def test_history_only_events_are_not_streamed(store: BundleStore):
    bundle = created(store)
    store.apply(
        bundle.vip_bundle_id,
        lambda b: saga.step_failed(b, saga.remaining_steps(b)[0], "timeout", max_attempts=5),
    )
    stored = store.require(bundle.vip_bundle_id)
    assert stored.step_failures == 1
    assert stream_names(store, bundle.vip_bundle_id) == ["VipBundleInitialized_v1"]

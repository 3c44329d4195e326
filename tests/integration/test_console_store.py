"""What the console reads from the store: search indexes, transition counters, the in-flight
index. All written by the same Lua scripts as the bundle itself, against a real Redis."""

from __future__ import annotations

import time

import pytest

from adapters.store import BundleStore
from process_manager import saga, transition
from process_manager.audit import Finding, Kind
from process_manager.bundle import Bundle, Status
from process_manager.messages import Event, Leg
from tests.factories import fresh_bundle


def create(store: BundleStore, correlation_id: str | None = None, **changes: str) -> Bundle:
    fresh = fresh_bundle(**changes)
    if correlation_id:
        fresh = fresh.model_copy(update={"correlation_id": correlation_id})
    bundle, is_new = store.create(fresh, saga.initialized(fresh))
    assert is_new
    return bundle


def step(store: BundleStore, bundle: Bundle, event: Event) -> Bundle:
    new = transition.apply(bundle, event)
    assert store.save(bundle, new, event)
    return new


def ids(bundles: list[Bundle]) -> set[str]:
    return {b.vip_bundle_id for b in bundles}


def test_search_finds_a_bundle_by_each_of_its_four_ids(store: BundleStore):
    bundle = create(store, correlation_id="order-77", customer_email="Ann.Lee@Example.com")
    create(store)  # another customer's bundle is never found

    assert ids(store.search(bundle.vip_bundle_id)) == {bundle.vip_bundle_id}
    assert ids(store.search(bundle.booking_id)) == {bundle.vip_bundle_id}
    assert ids(store.search("order-77")) == {bundle.vip_bundle_id}
    # Email: any case, surrounding blanks ignored.
    assert ids(store.search(" ann.lee@EXAMPLE.com ")) == {bundle.vip_bundle_id}
    assert store.search("ann.lee@example.org") == []
    assert store.search(bundle.vip_bundle_id[:8]) == []  # exact match only
    assert store.search("   ") == []


def test_search_by_email_or_correlation_finds_every_bundle_newest_first(store: BundleStore):
    first = create(store, correlation_id="batch-1", customer_email="bob@example.com")
    time.sleep(0.01)
    second = create(store, correlation_id="batch-1", customer_email="BOB@example.com")

    assert [b.vip_bundle_id for b in store.search("bob@example.com")] == [
        second.vip_bundle_id,
        first.vip_bundle_id,
    ]
    assert ids(store.search("batch-1")) == {first.vip_bundle_id, second.vip_bundle_id}


def test_indexes_are_written_once_at_creation_not_by_later_transitions(store: BundleStore):
    bundle = create(store)
    _, is_new = store.create(bundle, saga.initialized(bundle))  # the same id twice
    assert not is_new
    step(store, bundle, saga.booking_made(bundle, ["t1"]))

    email_key = f"{store.prefix}index:email:{bundle.customer_email.lower()}"
    assert store.redis.zcard(email_key) == 1
    assert store.redis.hlen(f"{store.prefix}index:booking") == 1


def test_every_transition_counts_its_event_and_its_move(store: BundleStore):
    bundle = create(store)
    bundle = step(store, bundle, saga.booking_made(bundle, ["t1"]))
    bundle = step(store, bundle, saga.flight_booking_failed(bundle, Leg.INBOUND, "no seats"))
    bundle = step(store, bundle, saga.ticket_refunded(bundle, "t1"))
    step(store, bundle, saga.failed(bundle))

    assert store.event_counts() == {
        "VipBundleInitialized_v1": 1,
        "BookingMade_v1": 1,
        "FlightBookingFailed_v1": 1,
        "TicketRefunded_v1": 1,
        "VipBundleFailed_v1": 1,
    }
    assert store.recent_moves(15) == {
        "initialized>booking_made": 1,
        "booking_made>rolling_back": 1,
        "rolling_back>rolling_back": 1,
        "rolling_back>failed": 1,
    }
    # Per-minute buckets expire by themselves.
    (bucket,) = store.redis.keys(f"{store.prefix}counts:moves:*")
    assert 0 < store.redis.ttl(bucket) <= 3600
    # A refused (stale) write counts nothing.
    assert not store.save(
        bundle, transition.apply(bundle, saga.failed(bundle)), saga.failed(bundle)
    )
    assert store.event_counts()["VipBundleFailed_v1"] == 1


def test_counts_come_from_the_status_indexes(store: BundleStore):
    moved, _ = create(store), create(store)
    step(store, moved, saga.booking_made(moved, ["t1"]))

    counts = store.counts()
    assert set(counts) == set(Status)
    assert counts[Status.INITIALIZED] == 1 and counts[Status.BOOKING_MADE] == 1
    assert sum(counts.values()) == 2


def test_the_in_flight_index_holds_unsettled_bundles_by_creation_time(store: BundleStore):
    bundle = create(store)
    other = create(store)
    assert store.oldest_in_flight() == pytest.approx(bundle.created_at.timestamp())

    # Parked: out of the in-flight index (it has its own alert); resumed: back, same age.
    bundle = step(store, bundle, saga.booking_failed(bundle, "sold out"))
    bundle = step(store, bundle, saga.compensation_failed(bundle, "RefundTicket", "503"))
    assert store.redis.zscore(store.in_flight_key, bundle.vip_bundle_id) is None
    bundle = step(store, bundle, saga.rollback_resumed(bundle, by="ops"))
    assert store.redis.zscore(store.in_flight_key, bundle.vip_bundle_id) == pytest.approx(
        bundle.created_at.timestamp()
    )
    assert bundle.history[-1].detail == "by=ops"

    step(store, bundle, saga.failed(bundle))
    assert store.oldest_in_flight() == pytest.approx(other.created_at.timestamp())


def test_drift_the_audit_records_is_counted_for_its_alert(store: BundleStore):
    bundle = create(store)
    bundle = step(store, bundle, saga.booking_failed(bundle, "sold out"))
    bundle = step(store, bundle, saga.failed(bundle))
    finding = Finding(
        vip_bundle_id=bundle.vip_bundle_id,
        status=bundle.status,
        kind=Kind.FLIGHT_TICKET_ACTIVE,
        key="flight_ticket_active:t-9",
        description="flight ticket t-9 is still active",
        record={"ticket_id": "t-9"},
    )
    applied = store.apply(bundle.vip_bundle_id, lambda b: saga.drift_detected(b, finding))
    assert applied.event is not None
    # Recorded once: the same finding again changes nothing and counts nothing.
    store.apply(bundle.vip_bundle_id, lambda b: saga.drift_detected(b, finding))

    assert store.event_counts()["LedgerDriftDetected_v1"] == 1
    assert store.recent_moves(15)["failed>failed"] == 1

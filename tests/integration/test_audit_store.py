"""The store's side of the audit against a real Redis: the walk over settled bundles, the
cursor, and drift recorded once without moving the bundle's settle time."""

from __future__ import annotations

import json
import time

import pytest

from adapters.store import BundleStore
from process_manager import saga
from process_manager.audit import PartnerRecords, findings
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tests.factories import fresh_bundle


def finalized(store: BundleStore) -> Bundle:
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    bid = bundle.vip_bundle_id
    store.apply(bid, lambda b: saga.booking_made(b, ["t1"]))
    store.apply(bid, lambda b: saga.flight_booked(b, Leg.INBOUND, ["i1"]))
    store.apply(bid, lambda b: saga.flight_booked(b, Leg.RETURN, ["r1"]))
    return store.apply(bid, saga.finalized).bundle


def failed(store: BundleStore) -> Bundle:
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    store.apply(bundle.vip_bundle_id, lambda b: saga.booking_failed(b, "sold out"))
    return store.apply(bundle.vip_bundle_id, saga.failed).bundle


def test_settled_walks_every_final_status_by_settle_time(store: BundleStore):
    first = finalized(store)
    second = failed(store)
    third = finalized(store)
    in_flight = fresh_bundle()
    store.create(in_flight, saga.initialized(in_flight))
    ids = [b.vip_bundle_id for b in (first, second, third)]

    rows = store.settled()

    assert [i for i, _ in rows] == ids
    assert rows[0][1] == pytest.approx(first.status_since().timestamp())
    assert [i for i, _ in store.settled(after=rows[0][1])] == ids[1:]
    assert [i for i, _ in store.settled(until=rows[1][1])] == ids[:2]
    assert [i for i, _ in store.settled(limit=2)] == ids[:2]
    assert [i for i, _ in store.settled(limit=2, newest=True)] == ids[1:]
    assert store.settled(after=time.time() + 1) == []


def test_drift_is_streamed_once_and_keeps_the_settle_time(store: BundleStore):
    bundle = finalized(store)
    (_, settled_at), *_ = store.settled()
    (finding, *_) = findings(bundle, PartnerRecords.index())  # every flight ticket missing

    first = store.apply(bundle.vip_bundle_id, lambda b: saga.drift_detected(b, finding))
    again = store.apply(bundle.vip_bundle_id, lambda b: saga.drift_detected(b, finding))

    assert first.event is not None and again.event is None
    stored = store.require(bundle.vip_bundle_id)
    assert stored.status is Status.FINALIZED and [d.key for d in stored.drift] == [finding.key]
    drift_events = [
        json.loads(f[b"data"])
        for _, f in store.redis.xrange(store.stream)
        if f[b"event_name"] == b"LedgerDriftDetected_v1"
    ]
    assert [e["payload"]["finding_key"] for e in drift_events] == [finding.key]
    assert drift_events[0]["payload"]["record"] == finding.record
    assert store.settled() == [(bundle.vip_bundle_id, settled_at)]


def test_audit_cursor_only_moves_forward(store: BundleStore):
    assert store.audit_cursor() is None
    assert store.advance_audit_cursor(1764556800.123456) == 1764556800.123456
    assert store.advance_audit_cursor(1764556000.0) == 1764556800.123456  # a slower, older run
    assert store.audit_cursor() == 1764556800.123456
    assert store.advance_audit_cursor(1764557000.5) == 1764557000.5

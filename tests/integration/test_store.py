"""The Redis store against a real Redis: atomic, version-checked transitions."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.partner_gate import PartnerGate
from adapters.store import BundleNotFound, BundleStore
from process_manager import saga, transition
from process_manager.bundle import Bundle, Status
from process_manager.messages import BookFlight, BookShowTickets, Command, Leg, RefundTicket, Step
from tests.factories import fresh_bundle


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
    first = transition.apply(bundle, saga.booking_made(bundle, ["t1", "t2"]))
    assert store.save(bundle, first, None)
    rival = transition.apply(bundle, saga.booking_failed(bundle, "late"))
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


def test_a_tenants_status_indexes_follow_its_bundles_only(store: BundleStore):
    fresh = fresh_bundle().model_copy(update={"tenant": "shop-a"})
    mine, _ = store.create(fresh, saga.initialized(fresh))
    other = created(store)  # no tenant: in the global indexes only
    assert store.count(Status.INITIALIZED, tenant="shop-a") == 1
    assert store.count(Status.INITIALIZED) == 2
    store.apply(mine.vip_bundle_id, lambda b: saga.booking_failed(b, "sold out"))
    store.apply(mine.vip_bundle_id, saga.failed)
    assert store.count(Status.INITIALIZED, tenant="shop-a") == 0
    assert store.count(Status.ROLLING_BACK, tenant="shop-a") == 0
    failed = store.list(Status.FAILED, tenant="shop-a")
    assert [(b.vip_bundle_id, b.tenant) for b in failed] == [(mine.vip_bundle_id, "shop-a")]
    assert store.list(Status.INITIALIZED, tenant="shop-a") == []
    assert [b.vip_bundle_id for b in store.list(Status.INITIALIZED)] == [other.vip_bundle_id]
    assert store.count(Status.FAILED, tenant="shop-b") == 0


def test_a_second_event_rides_in_the_same_write(store: BundleStore):
    # The return flight booked and the bundle finalized: two events, one transition script.
    bundle = created(store)
    bid = bundle.vip_bundle_id
    store.apply(bid, lambda b: saga.booking_made(b, ["t1"]))
    store.apply(bid, lambda b: saga.flight_booked(b, Leg.INBOUND, ["i1"]))
    before = store.require(bid).version
    applied = store.apply(
        bid, lambda b: saga.flight_booked(b, Leg.RETURN, ["r1"]), then=saga.finalized
    )
    assert [e.name() for e in applied.events] == ["FlightBooked_v1", "VipBundleFinalized_v1"]
    stored = store.require(bid)
    assert stored.status is Status.FINALIZED and stored.version == before + 2
    assert [h.to_status for h in stored.history[-2:]] == [Status.RETURN_BOOKED, Status.FINALIZED]
    assert stream_names(store, bid)[-2:] == ["FlightBooked_v1", "VipBundleFinalized_v1"]
    assert store.count(Status.RETURN_BOOKED) == 0 and store.count(Status.FINALIZED) == 1
    moves = store.recent_moves()
    assert moves["inbound_booked>return_booked"] == 1 and moves["return_booked>finalized"] == 1


def test_a_second_event_that_does_not_fit_is_left_out(store: BundleStore):
    bundle = created(store)
    applied = store.apply(
        bundle.vip_bundle_id, lambda b: saga.booking_made(b, ["t1"]), then=saga.finalized
    )
    assert [e.name() for e in applied.events] == ["BookingMade_v1"]
    assert store.require(bundle.vip_bundle_id).status is Status.BOOKING_MADE


def test_history_only_events_are_not_streamed(store: BundleStore):
    bundle = created(store)
    store.apply(
        bundle.vip_bundle_id,
        lambda b: saga.step_failed(b, saga.remaining_steps(b)[0], "timeout", out_of_time=False),
    )
    stored = store.require(bundle.vip_bundle_id)
    assert stored.step_failures == 1
    assert stream_names(store, bundle.vip_bundle_id) == ["VipBundleInitialized_v1"]


def _start(store: BundleStore, bundle: Bundle, command: Command) -> tuple[Bundle, int] | None:
    return store.start(
        bundle.vip_bundle_id,
        saga.step_name(command),
        saga.runs_in(command),
        per_round=saga.counted_per_round(command),
    )


def test_a_step_starts_and_is_counted_only_in_its_status(store: BundleStore):
    bundle = created(store)
    show = BookShowTickets(vip_bundle_id=bundle.vip_bundle_id)
    inbound = BookFlight(vip_bundle_id=bundle.vip_bundle_id, leg=Leg.INBOUND)
    started = _start(store, bundle, show)
    assert started is not None
    read, count = started
    assert (read, count) == (store.require(bundle.vip_bundle_id), 1)
    assert read.starts == {"BookShowTickets": 1}
    assert _start(store, bundle, inbound) is None  # not its status: nothing counted
    assert _start(store, bundle, show)[1] == 2  # type: ignore[index]
    assert store.require(bundle.vip_bundle_id).starts == {"BookShowTickets": 2}
    with pytest.raises(BundleNotFound):
        store.start("no-such-bundle", "BookShowTickets", [Status.INITIALIZED])


def test_once_cancelling_no_forward_step_starts_and_the_count_is_final(store: BundleStore):
    bundle = created(store)
    show = BookShowTickets(vip_bundle_id=bundle.vip_bundle_id)
    _start(store, bundle, show)
    cancel = saga.cancel(store.require(bundle.vip_bundle_id), "test")
    applied = store.apply(bundle.vip_bundle_id, lambda b: cancel)  # type: ignore[arg-type,return-value]
    assert applied.bundle.status is Status.CANCELLING
    assert _start(store, bundle, show) is None
    after = store.require(bundle.vip_bundle_id)
    assert after.starts == {"BookShowTickets": 1}
    assert saga.in_doubt(after) == [Step.SHOW]


def test_an_undo_is_counted_per_round(store: BundleStore):
    bundle = created(store)
    bid = bundle.vip_bundle_id
    store.apply(bid, lambda b: saga.booking_made(b, ["t1"]))
    store.apply(bid, lambda b: saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    refund = RefundTicket(vip_bundle_id=bid, ticket_id="t1")
    read, count = _start(store, bundle, refund)  # type: ignore[misc]
    assert count == 1 and saga.start_key(read, refund) in read.starts
    store.apply(bid, lambda b: saga.compensation_failed(b, "RefundTicket", "503"))
    store.apply(bid, saga.rollback_resumed)
    read, count = _start(store, bundle, refund)  # type: ignore[misc]
    assert count == 1  # a fresh budget in the new round
    assert read.starts[saga.start_key(read, refund)] == 1


def test_several_undos_start_in_one_round_trip_each_counted(store: BundleStore):
    bundle = created(store)
    bid = bundle.vip_bundle_id
    store.apply(bid, lambda b: saga.booking_made(b, ["t1", "t2"]))
    store.apply(bid, lambda b: saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    refunds = [RefundTicket(vip_bundle_id=bid, ticket_id=t) for t in ("t1", "t2")]
    names = [saga.step_name(c) for c in refunds]
    started = store.start_all(bid, names, saga.runs_in(refunds[0]), per_round=True)
    assert started is not None and started[1] == [1, 1]
    read = started[0]
    assert all(read.starts[saga.start_key(read, c)] == 1 for c in refunds)
    again = store.start_all(bid, names[1:], saga.runs_in(refunds[0]), per_round=True)
    assert again is not None and again[1] == [2]


def test_one_write_records_every_follow_up_that_applies_in_order(store: BundleStore):
    bundle = created(store)
    bid = bundle.vip_bundle_id
    store.apply(bid, lambda b: saga.booking_made(b, ["t1", "t2"]))
    store.apply(bid, lambda b: saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    refunds = [lambda b, t=t: saga.ticket_refunded(b, t) for t in ("t1", "t2")]
    refused = lambda b: saga.ticket_refunded(b, "t1")  # noqa: E731  # a duplicate: left out
    applied = store.apply(bid, refunds[0], then=[refunds[1], refused, lambda b: None, saga.finish])
    names = [e.name() for e in applied.events]
    assert names == ["TicketRefunded_v1", "TicketRefunded_v1", "VipBundleFailed_v1"]
    assert applied.bundle.status is Status.FAILED
    assert stream_names(store, bid)[-3:] == names


def test_a_parked_bundles_retry_rounds_do_not_grow_its_document(store: BundleStore):
    b = created(store)
    b = store.apply(b.vip_bundle_id, lambda b: saga.booking_made(b, ["t1"])).bundle
    b = store.apply(
        b.vip_bundle_id, lambda b: saga.flight_booking_failed(b, Leg.INBOUND, "409")
    ).bundle
    b = store.apply(b.vip_bundle_id, lambda b: saga.compensation_failed(b, "refund", "503")).bundle
    sizes = []
    for _ in range(20):
        b = store.apply(b.vip_bundle_id, saga.resume_parked).bundle
        b = store.apply(
            b.vip_bundle_id, lambda b: saga.compensation_failed(b, "refund", "503")
        ).bundle
        sizes.append(len(store.redis.hget(store._bundle_key(b.vip_bundle_id), "doc")))
    assert b.status is Status.COMPENSATION_FAILED
    assert store.count(Status.COMPENSATION_FAILED) == 1 and store.count(Status.ROLLING_BACK) == 0
    assert sizes[-1] - sizes[2] < 50  # a counter grows, not the history
    assert store.recent_moves()["compensation_failed>rolling_back"] == 20


def test_a_step_start_asks_the_partner_gate_in_the_same_round_trip(store: BundleStore):
    # One quota slot a second: the start that is due takes it (and says "go"); a second start
    # is told to wait; a start that is not due (a cancelling bundle) never asks the gate.
    gate = PartnerGate(store.redis, store.prefix, {"dead-nation-api": 1.0})
    command = BookShowTickets(vip_bundle_id=created(store).vip_bundle_id)
    ask = gate.ask("dead-nation-api", undo=False)
    step, runs_in = saga.step_name(command), saga.runs_in(command)
    first = store.start_all(command.vip_bundle_id, [step], runs_in, admit=ask)
    assert first is not None and first.starts == [1]
    assert first.admission is not None
    assert (first.admission.reason, first.admission.wait_s) == ("go", 0.0)
    second = store.start_all(command.vip_bundle_id, [step], runs_in, admit=ask)
    assert second is not None and second.admission is not None
    assert second.admission.reason == "quota" and 0 < second.admission.wait_s <= 1.0
    tat = gate.state("dead-nation-api")["tat"]
    cancelled = created(store)
    cancel = saga.cancel(cancelled, "test")
    store.apply(cancelled.vip_bundle_id, lambda b: cancel)  # type: ignore[arg-type,return-value]
    idle = BookShowTickets(vip_bundle_id=cancelled.vip_bundle_id)
    assert store.start_all(idle.vip_bundle_id, [step], runs_in, admit=ask) is None
    assert gate.state("dead-nation-api")["tat"] == tat  # no slot taken

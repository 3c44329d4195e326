"""Giving up on a step whose worker died every time it ran (the start count in tasks/steps.py)."""

from __future__ import annotations

from process_manager import saga, transition
from process_manager.bundle import Bundle, Status
from process_manager.messages import (
    BookFlight,
    BookShowTickets,
    FinalizeVipBundle,
    Leg,
    RefundTicket,
    ResolveBooking,
    Step,
)
from tests.factories import new_bundle


def tickets_booked() -> Bundle:
    b = new_bundle()
    return transition.apply(b, saga.booking_made(b, ["t1", "t2"]))


def test_a_forward_step_never_finished_rolls_back_in_doubt():
    b = tickets_booked()
    event = saga.never_finished(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND), 11)
    after = transition.apply(b, event)
    assert after.status is Status.ROLLING_BACK
    assert after.failure is not None and after.failure.in_doubt
    assert "started 11 times" in after.failure.reason
    # In doubt: the inbound flight may exist at the airline, so its request is re-sent with
    # the same key to learn its tickets (then they are cancelled) before anything else.
    assert saga.pending_compensations(after)[0] == ResolveBooking(
        vip_bundle_id=b.vip_bundle_id, step=Step.INBOUND
    )


def test_a_show_booking_never_finished_fails_the_booking_in_doubt():
    b = new_bundle()
    after = transition.apply(
        b, saga.never_finished(b, BookShowTickets(vip_bundle_id=b.vip_bundle_id), 3)
    )
    assert after.status is Status.ROLLING_BACK
    assert after.failure is not None and after.failure.in_doubt
    # No longer a known limit: a show booking in doubt is resolved like a flight.
    assert saga.pending_compensations(after) == [
        ResolveBooking(vip_bundle_id=b.vip_bundle_id, step=Step.SHOW)
    ]


def test_an_undo_never_finished_parks_and_finalizing_is_never_given_up():
    b = tickets_booked()
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "no seats"))
    refund = RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t1")
    assert (
        transition.apply(b, saga.never_finished(b, refund, 11)).status is Status.COMPENSATION_FAILED
    )
    assert saga.never_finished(b, FinalizeVipBundle(vip_bundle_id=b.vip_bundle_id), 11) is None


def test_an_undo_gets_a_fresh_start_count_in_each_rollback_round():
    b = tickets_booked()
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "no seats"))
    refund = RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t1")
    first = saga.start_key(b, refund)
    parked = transition.apply(b, saga.compensation_failed(b, "RefundTicket", "503"))
    resumed = transition.apply(parked, saga.rollback_resumed(parked))
    assert saga.start_key(resumed, refund) != first
    inbound = BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND)
    assert saga.start_key(b, inbound) == "BookFlight:inbound"

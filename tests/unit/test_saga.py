"""The saga's decisions, without a broker: transitions, next steps, what to undo."""

from __future__ import annotations

import uuid

import pytest

from process_manager import saga, transition
from process_manager.bundle import Bundle, Status
from process_manager.messages import (
    EVENT_ID_NAMESPACE,
    BookFlight,
    BookShowTickets,
    CancelFlightTickets,
    FinalizeVipBundle,
    Leg,
    RefundTicket,
    ResolveBooking,
    Step,
)
from tests.factories import new_bundle


def booked_until(status: Status) -> Bundle:
    b = new_bundle()
    steps = [
        lambda b: saga.booking_made(b, ["t1", "t2"]),
        lambda b: saga.flight_booked(b, Leg.INBOUND, ["i1", "i2"]),
        lambda b: saga.flight_booked(b, Leg.RETURN, ["r1", "r2"]),
        saga.finalized,
    ]
    for step in steps:
        if b.status is status:
            break
        b = transition.apply(b, step(b))
    assert b.status is status
    return b


def test_walks_the_happy_path_to_finalized_with_history():
    b = booked_until(Status.FINALIZED)
    assert [h.to_status for h in b.history] == [
        Status.INITIALIZED,
        Status.BOOKING_MADE,
        Status.INBOUND_BOOKED,
        Status.RETURN_BOOKED,
        Status.FINALIZED,
    ]
    assert b.version == 5
    assert b.flight_tickets == {Leg.INBOUND: ["i1", "i2"], Leg.RETURN: ["r1", "r2"]}
    assert saga.remaining_steps(b) == []


@pytest.mark.parametrize(
    ("status", "first_step"),
    [
        (Status.INITIALIZED, BookShowTickets),
        (Status.BOOKING_MADE, BookFlight),
        (Status.INBOUND_BOOKED, BookFlight),
        (Status.RETURN_BOOKED, FinalizeVipBundle),
    ],
)
def test_remaining_steps_resume_from_the_stored_state(status, first_step):
    b = booked_until(status)
    steps = saga.remaining_steps(b)
    assert isinstance(steps[0], first_step)
    assert saga.is_pending(b, steps[0])
    assert not any(saga.is_pending(b, s) for s in steps[1:])
    # The return-flight step finalizes too: a separate finalize runs only when it is all left.
    assert (FinalizeVipBundle(vip_bundle_id=b.vip_bundle_id) in steps) == (
        status is Status.RETURN_BOOKED
    )


def test_inbound_sold_out_refunds_every_ticket_and_cancels_nothing():
    b = booked_until(Status.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    assert b.status is Status.ROLLING_BACK
    assert saga.pending_compensations(b) == [
        RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t1"),
        RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t2"),
    ]


def test_return_sold_out_cancels_inbound_first_then_refunds():
    b = booked_until(Status.INBOUND_BOOKED)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.RETURN, "409"))
    undo = saga.pending_compensations(b)
    assert undo[0] == CancelFlightTickets(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND)
    assert [type(c) for c in undo[1:]] == [RefundTicket, RefundTicket]


def test_show_sold_out_has_nothing_to_undo_and_fails_at_once():
    b = new_bundle()
    b = transition.apply(b, saga.booking_failed(b, "sold out"))
    assert saga.pending_compensations(b) == []
    b = transition.apply(b, saga.failed(b))
    assert b.status is Status.FAILED


def test_bundle_fails_only_when_every_undo_is_recorded():
    b = booked_until(Status.INBOUND_BOOKED)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.RETURN, "409"))
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.failed(b))
    b = transition.apply(b, saga.flight_tickets_cancelled(b, Leg.INBOUND, ["i1", "i2"]))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    b = transition.apply(b, saga.ticket_refunded(b, "t2"))
    b = transition.apply(b, saga.failed(b))
    assert b.status is Status.FAILED
    assert b.refunded_ticket_ids == ["t1", "t2"]


def test_a_ticket_is_never_refunded_twice():
    b = booked_until(Status.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.ticket_refunded(b, "t1"))
    assert not saga.is_pending(b, RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t1"))


def test_duplicate_or_late_events_are_refused():
    b = booked_until(Status.BOOKING_MADE)
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.booking_made(b, ["x"]))  # redelivered step
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.flight_booked(b, Leg.RETURN, ["r"]))  # legs out of order
    final = booked_until(Status.FINALIZED)
    with pytest.raises(saga.IllegalTransition):
        transition.apply(final, saga.flight_booking_failed(final, Leg.RETURN, "late"))


def test_parked_rollback_resumes_and_keeps_what_was_undone():
    b = booked_until(Status.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    b = transition.apply(b, saga.compensation_failed(b, "RefundTicket", "payments down"))
    assert b.status is Status.COMPENSATION_FAILED
    assert saga.pending_compensations(b) == [
        RefundTicket(vip_bundle_id=b.vip_bundle_id, ticket_id="t2")
    ]
    b = transition.apply(b, saga.rollback_resumed(b))
    assert b.status is Status.ROLLING_BACK
    b = transition.apply(b, saga.ticket_refunded(b, "t2"))
    assert transition.apply(b, saga.failed(b)).status is Status.FAILED


def test_technical_failures_retry_until_the_deadline_then_give_up_with_the_leg_in_doubt():
    b = booked_until(Status.INBOUND_BOOKED)
    step = BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.RETURN)
    for _ in range(5):  # by count, never: a step is tried again until the deadline
        b = transition.apply(b, saga.step_failed(b, step, "timeout", out_of_time=False))
        assert b.status is Status.INBOUND_BOOKED
    b = transition.apply(b, saga.step_failed(b, step, "timeout", out_of_time=True))
    assert b.status is Status.ROLLING_BACK
    assert b.failure is not None and b.failure.in_doubt
    # The return leg may have been booked without an answer: it is resolved by re-sending.
    assert ResolveBooking(vip_bundle_id=b.vip_bundle_id, step=Step.RETURN) in (
        saga.pending_compensations(b)
    )


def test_idempotency_keys_come_from_business_ids_only():
    b = booked_until(Status.BOOKING_MADE)
    one = saga.flight_booked(b, Leg.INBOUND, ["i"])
    two = saga.flight_booked(b, Leg.INBOUND, ["i"])
    assert one.header.idempotency_key == two.header.idempotency_key
    assert one.header.correlation_id == b.vip_bundle_id


def test_an_event_made_again_has_the_same_event_id_so_consumers_see_it_once():
    # A transition lost in a failover and redone republishes its event: same id, not a new one.
    b = booked_until(Status.BOOKING_MADE)
    one = saga.flight_booked(b, Leg.INBOUND, ["i"])
    two = saga.flight_booked(b, Leg.INBOUND, ["i"])
    assert one.header.event_id == two.header.event_id
    assert one.header.event_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, one.header.idempotency_key))
    other = saga.flight_booked(b, Leg.RETURN, ["r"])
    assert other.header.event_id != one.header.event_id


def test_every_state_has_a_way_out_in_the_table():
    # A way out leads elsewhere: self-loops (a noted failure, an operator's resume, drift the
    # audit found on a final bundle) do not count.
    sources = {state for (state, _), target in saga.TRANSITIONS.items() if target != state}
    # A finalized bundle can still be cancelled; failed and cancelled are the ends.
    assert set(Status) - sources == {Status.FAILED, Status.CANCELLED}


@pytest.mark.parametrize("status", [Status.INITIALIZED, Status.INBOUND_BOOKED])
def test_an_operators_resume_is_noted_with_who_asked_and_changes_nothing_else(status):
    b = booked_until(status)
    resumed = transition.apply(b, saga.resumed(b, by="k-ops"))
    assert resumed.status is status
    assert resumed.history[-1].event == "BundleResumed"
    assert resumed.history[-1].detail == "by=k-ops"
    assert saga.remaining_steps(resumed) == saga.remaining_steps(b)


def test_a_final_bundle_cannot_be_resumed():
    b = booked_until(Status.RETURN_BOOKED)
    done = transition.apply(b, saga.finalized(b))
    with pytest.raises(saga.IllegalTransition):
        transition.apply(done, saga.resumed(done, by="k-ops"))


def test_a_step_given_up_at_the_deadline_is_in_doubt_only_if_a_try_may_have_reached_it():
    b = booked_until(Status.BOOKING_MADE)
    step = BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND)
    turned_away = transition.apply(
        b, saga.out_of_time(b, step, 900, "transportation-api", in_doubt=False)
    )
    assert turned_away.status is Status.ROLLING_BACK
    assert turned_away.failure is not None and not turned_away.failure.in_doubt
    assert "booking deadline of 900 s passed" in turned_away.failure.reason
    # Nothing to resolve: the leg booked nothing, so nothing is re-sent to find out.
    assert not any(isinstance(c, ResolveBooking) for c in saga.pending_compensations(turned_away))
    maybe = transition.apply(b, saga.out_of_time(b, step, 900, "transportation-api"))
    assert ResolveBooking(vip_bundle_id=b.vip_bundle_id, step=Step.INBOUND) in (
        saga.pending_compensations(maybe)
    )

"""Cancelling a bundle, without a broker: every (status, cancel) pair, late outcomes of a step
that was at a partner when the cancel came, steps in doubt, parked cancellations resumed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from process_manager import saga, transition
from process_manager.bundle import UNDOING, Bundle, Status
from process_manager.messages import (
    BookFlight,
    BookShowTickets,
    CancelFlightTickets,
    CancellationResumed,
    Event,
    FinalizeVipBundle,
    Leg,
    RefundTicket,
    ResolveBooking,
    RollbackResumed,
    Step,
    VipBundleCancellationRequested_v1,
    VipBundleCancelled_v1,
)
from tests.factories import new_bundle

S = Status
TICKETS, INBOUND, RETURN = ["t1", "t2"], ["i1", "i2"], ["r1", "r2"]


def forward(status: Status) -> Bundle:
    b = new_bundle()
    steps: list[Callable[[Bundle], object]] = [
        lambda b: saga.booking_made(b, TICKETS),
        lambda b: saga.flight_booked(b, Leg.INBOUND, INBOUND),
        lambda b: saga.flight_booked(b, Leg.RETURN, RETURN),
        saga.finalized,
    ]
    for step in steps:
        if b.status is status:
            break
        b = transition.apply(b, step(b))  # type: ignore[arg-type]
    assert b.status is status
    return b


def rolling_back() -> Bundle:
    b = forward(S.BOOKING_MADE)
    return transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409"))


def parked() -> Bundle:
    b = rolling_back()
    return transition.apply(b, saga.compensation_failed(b, "RefundTicket", "payments down"))


def failed() -> Bundle:
    b = new_bundle()
    b = transition.apply(b, saga.booking_failed(b, "sold out"))
    return transition.apply(b, saga.failed(b))


def cancel(b: Bundle, reason: str = "customer asked") -> Bundle:
    event = saga.cancel(b, reason, who="test")
    assert event is not None and not isinstance(event, saga.CancelRefused)
    return transition.apply(b, event)


def cancelling() -> Bundle:
    return cancel(forward(S.BOOKING_MADE))


def cancelled() -> Bundle:
    b = cancel(new_bundle())  # the show step never started: nothing to undo
    event = saga.finish(b)
    assert isinstance(event, VipBundleCancelled_v1)
    return transition.apply(b, event)


def _event(b: Bundle, cls: type[Event], **payload: Any) -> Event:
    return cls.create(
        correlation_id=b.correlation_id, key="test", vip_bundle_id=b.vip_bundle_id, **payload
    )


def started(b: Bundle, command: object) -> Bundle:
    """The bundle as the store reads it after `command` started once."""
    key = saga.start_key(b, command)  # type: ignore[arg-type]
    return b.model_copy(update={"starts": {**b.starts, key: b.starts.get(key, 0) + 1}})


def undo_everything(b: Bundle) -> Bundle:
    """Record every pending undo as done (resolves must have been settled first)."""
    for command in saga.pending_compensations(b):
        match command:
            case RefundTicket(ticket_id=t):
                b = transition.apply(b, saga.ticket_refunded(b, t))
            case CancelFlightTickets(leg=leg):
                b = transition.apply(
                    b, saga.flight_tickets_cancelled(b, leg, b.flight_tickets[leg])
                )
            case _:
                raise AssertionError(f"unexpected {command}")
    return b


BUILDERS: dict[Status, Callable[[], Bundle]] = {
    S.INITIALIZED: lambda: forward(S.INITIALIZED),
    S.BOOKING_MADE: lambda: forward(S.BOOKING_MADE),
    S.INBOUND_BOOKED: lambda: forward(S.INBOUND_BOOKED),
    S.RETURN_BOOKED: lambda: forward(S.RETURN_BOOKED),
    S.FINALIZED: lambda: forward(S.FINALIZED),
    S.ROLLING_BACK: rolling_back,
    S.COMPENSATION_FAILED: parked,
    S.CANCELLING: cancelling,
    S.CANCELLED: cancelled,
    S.FAILED: failed,
}


def test_every_status_has_a_builder():
    assert set(BUILDERS) == set(Status)
    assert all(BUILDERS[s]().status is s for s in Status)


# --- every (status, cancel) pair ---------------------------------------------------------------

# What each status owes once cancelled (nothing started: no step is in doubt).
UNDOS_AFTER_CANCEL = {
    S.INITIALIZED: set(),
    S.BOOKING_MADE: {("refund", "t1"), ("refund", "t2")},
    S.INBOUND_BOOKED: {("cancel", "inbound"), ("refund", "t1"), ("refund", "t2")},
    S.RETURN_BOOKED: {
        ("cancel", "return"),
        ("cancel", "inbound"),
        ("refund", "t1"),
        ("refund", "t2"),
    },
    S.FINALIZED: {("cancel", "return"), ("cancel", "inbound"), ("refund", "t1"), ("refund", "t2")},
    S.ROLLING_BACK: {("refund", "t1"), ("refund", "t2")},
    S.COMPENSATION_FAILED: {("refund", "t1"), ("refund", "t2")},
}


def _undos(b: Bundle) -> set[tuple[str, str]]:
    out = set()
    for command in saga.pending_compensations(b):
        match command:
            case RefundTicket(ticket_id=t):
                out.add(("refund", t))
            case CancelFlightTickets(leg=leg):
                out.add(("cancel", leg.value))
            case ResolveBooking(step=step):
                out.add(("resolve", step.value))
    return out


@pytest.mark.parametrize("status", sorted(UNDOS_AFTER_CANCEL))
def test_a_cancel_moves_the_bundle_to_cancelling_and_owes_every_undo(status: Status):
    b = BUILDERS[status]()
    event = saga.cancel(b, "changed my mind", who="ops:ann")
    assert isinstance(event, VipBundleCancellationRequested_v1)
    assert (event.reason, event.from_status, event.requested_by) == (
        "changed my mind",
        status.value,
        "ops:ann",
    )
    after = transition.apply(b, event)
    assert after.status is S.CANCELLING
    assert after.cancellation is not None
    assert (after.cancellation.reason, after.cancellation.from_status) == (
        "changed my mind",
        status,
    )
    assert after.cancellation.requested_by == "ops:ann"
    assert _undos(after) == UNDOS_AFTER_CANCEL[status]
    # A cancel stops the forward path: no step is due any more.
    assert saga.remaining_steps(after) == []


def test_a_failed_bundle_cannot_be_cancelled():
    refused = saga.cancel(failed(), "too late")
    assert isinstance(refused, saga.CancelRefused)
    assert "already failed" in refused.reason


@pytest.mark.parametrize("status", [S.CANCELLING, S.CANCELLED])
def test_cancelling_twice_changes_nothing(status: Status):
    b = BUILDERS[status]()
    assert saga.cancel(b, "again") is None
    with pytest.raises(saga.IllegalTransition):
        transition.apply(
            b, _event(b, VipBundleCancellationRequested_v1, reason="r", from_status=status)
        )


def test_a_parked_cancellation_cancelled_again_is_taken_up_as_a_cancellation():
    b = cancelling()
    b = transition.apply(b, saga.compensation_failed(b, "RefundTicket", "payments down"))
    event = saga.cancel(b, "again")
    assert isinstance(event, CancellationResumed)
    after = transition.apply(b, event)
    assert after.status is S.CANCELLING
    assert after.cancellation is not None and after.cancellation.reason == "customer asked"


def test_the_cancelled_event_is_last_and_says_what_was_undone():
    b = cancel(forward(S.FINALIZED), "weather")
    assert saga.finish(b) is None  # undos pending
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.cancelled(b))
    b = undo_everything(b)
    event = saga.finish(b)
    assert isinstance(event, VipBundleCancelled_v1)
    assert event.reason == "weather"
    assert sorted(event.refunded_ticket_ids) == TICKETS
    assert sorted(event.cancelled_flight_ticket_ids) == sorted(INBOUND + RETURN)
    b = transition.apply(b, event)
    assert b.status is S.CANCELLED
    assert b.history[-1].event == "VipBundleCancelled_v1"
    # Nothing applies to a cancelled bundle any more.
    for late in (saga.ticket_refunded(b, "t1"), saga.booking_made(b, ["x"]), saga.cancelled(b)):
        with pytest.raises(saga.IllegalTransition):
            transition.apply(b, late)


def test_a_rollback_cancelled_continues_the_same_undos_and_ends_cancelled():
    b = rolling_back()
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    b = cancel(b)
    assert _undos(b) == {("refund", "t2")}
    b = transition.apply(b, saga.ticket_refunded(b, "t2"))
    assert transition.apply(b, saga.finish(b)).status is S.CANCELLED  # type: ignore[arg-type]


def test_a_cancel_of_an_untouched_bundle_ends_at_once():
    b = cancel(new_bundle())
    assert saga.pending_compensations(b) == []
    assert isinstance(saga.finish(b), VipBundleCancelled_v1)


# --- guarded start: which statuses each step may start in -------------------------------------


def test_forward_steps_start_only_in_their_own_status_and_undos_only_while_undoing():
    bid = new_bundle().vip_bundle_id
    assert saga.runs_in(BookShowTickets(vip_bundle_id=bid)) == {S.INITIALIZED}
    assert saga.runs_in(BookFlight(vip_bundle_id=bid, leg=Leg.INBOUND)) == {S.BOOKING_MADE}
    assert saga.runs_in(BookFlight(vip_bundle_id=bid, leg=Leg.RETURN)) == {S.INBOUND_BOOKED}
    assert saga.runs_in(FinalizeVipBundle(vip_bundle_id=bid)) == {S.RETURN_BOOKED}
    for undo in (
        RefundTicket(vip_bundle_id=bid, ticket_id="t1"),
        CancelFlightTickets(vip_bundle_id=bid, leg=Leg.INBOUND),
        ResolveBooking(vip_bundle_id=bid, step=Step.SHOW),
    ):
        assert saga.runs_in(undo) == UNDOING
        assert S.CANCELLING in saga.runs_in(undo)


# --- in doubt: the step that was next at cancel time -------------------------------------------

NEXT_STEP = {
    S.INITIALIZED: (BookShowTickets, Step.SHOW),
    S.BOOKING_MADE: (BookFlight, Step.INBOUND),
    S.INBOUND_BOOKED: (BookFlight, Step.RETURN),
}


def _command(b: Bundle, step: Step) -> object:
    return saga.booking_command(b.vip_bundle_id, step)


@pytest.mark.parametrize("status", list(NEXT_STEP))
def test_the_step_next_at_cancel_time_is_in_doubt_only_if_it_started(status: Status):
    _, step = NEXT_STEP[status]
    b = forward(status)
    not_started = cancel(b)
    assert saga.in_doubt(not_started) == []
    was_running = cancel(started(b, _command(b, step)))
    assert saga.in_doubt(was_running) == [step]
    resolve = ResolveBooking(vip_bundle_id=b.vip_bundle_id, step=step)
    assert saga.pending_compensations(was_running)[0] == resolve
    assert saga.is_pending(was_running, resolve)
    # The cancel may not complete while the step is in doubt.
    assert saga.finish(was_running) is None
    with pytest.raises(saga.IllegalTransition):
        transition.apply(was_running, saga.cancelled(was_running))


def test_a_step_started_before_the_previous_one_is_not_in_doubt():
    # Counters of steps other than the one next at cancel time do not matter.
    b = forward(S.BOOKING_MADE)
    b = started(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.RETURN))
    assert saga.in_doubt(cancel(b)) == []


def test_finalizing_is_never_in_doubt():
    b = forward(S.RETURN_BOOKED)
    b = cancel(started(b, FinalizeVipBundle(vip_bundle_id=b.vip_bundle_id)))
    assert saga.in_doubt(b) == []


# --- late outcomes of the step that was at the partner -----------------------------------------


def _running_then_cancelled(status: Status) -> tuple[Bundle, Step]:
    _, step = NEXT_STEP[status]
    b = forward(status)
    return cancel(started(b, _command(b, step))), step


def test_late_show_tickets_are_recorded_and_refunded():
    b, _ = _running_then_cancelled(S.INITIALIZED)
    command = BookShowTickets(vip_bundle_id=b.vip_bundle_id)
    assert saga.accepts_outcome(b, command)
    b = transition.apply(b, saga.booking_made(b, TICKETS))
    assert b.status is S.CANCELLING
    assert b.ticket_ids == TICKETS
    assert saga.in_doubt(b) == []
    assert _undos(b) == {("refund", "t1"), ("refund", "t2")}
    # The same outcome again (the resolve and the original both answer): refused, once only.
    assert not saga.accepts_outcome(b, command)
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.booking_made(b, TICKETS))
    b = undo_everything(b)
    assert transition.apply(b, saga.finish(b)).status is S.CANCELLED  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "leg"), [(S.BOOKING_MADE, Leg.INBOUND), (S.INBOUND_BOOKED, Leg.RETURN)]
)
def test_late_flight_tickets_are_recorded_and_cancelled(status: Status, leg: Leg):
    b, _ = _running_then_cancelled(status)
    assert saga.accepts_outcome(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=leg))
    b = transition.apply(b, saga.flight_booked(b, leg, ["late1", "late2"]))
    assert b.status is S.CANCELLING
    assert b.flight_tickets[leg] == ["late1", "late2"]
    assert ("cancel", leg.value) in _undos(b)
    assert saga.in_doubt(b) == []
    b = undo_everything(b)
    assert b.status is S.CANCELLING
    done = transition.apply(b, saga.finish(b))  # type: ignore[arg-type]
    assert done.status is S.CANCELLED
    assert "FlightBooked_v1" in [h.event for h in done.history if h.from_status is S.CANCELLING]


@pytest.mark.parametrize("status", list(NEXT_STEP))
def test_a_late_409_means_the_step_booked_nothing(status: Status):
    b, step = _running_then_cancelled(status)
    if step is Step.SHOW:
        event = saga.booking_failed(b, "sold out")
    else:
        event = saga.flight_booking_failed(b, saga.LEG_OF_STEP[step], "no seats")
    b = transition.apply(b, event)
    assert b.status is S.CANCELLING
    assert step in b.booked_nothing
    assert saga.in_doubt(b) == []
    b = undo_everything(b)
    assert transition.apply(b, saga.finish(b)).status is S.CANCELLED  # type: ignore[arg-type]


def test_a_late_give_up_leaves_the_step_in_doubt():
    b, step = _running_then_cancelled(S.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "gave up", in_doubt=True))
    assert b.status is S.CANCELLING
    assert saga.in_doubt(b) == [step]


def test_outcomes_of_steps_not_awaited_are_refused():
    b, _ = _running_then_cancelled(S.BOOKING_MADE)
    # The return leg was not running at cancel time: it cannot have booked anything.
    assert not saga.accepts_outcome(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.RETURN))
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.flight_booked(b, Leg.RETURN, ["x"]))
    # Show tickets are known already.
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.booking_made(b, ["x"]))
    # A technical failure of the forward step is not noted while cancelling.
    with pytest.raises(saga.IllegalTransition):
        step = BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND)
        transition.apply(b, saga.step_failed(b, step, "503", out_of_time=False))


def test_a_forward_step_outcome_is_accepted_in_the_forward_path_only_for_the_current_step():
    b = forward(S.BOOKING_MADE)
    assert saga.accepts_outcome(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.INBOUND))
    assert not saga.accepts_outcome(b, BookFlight(vip_bundle_id=b.vip_bundle_id, leg=Leg.RETURN))
    assert not saga.accepts_outcome(b, BookShowTickets(vip_bundle_id=b.vip_bundle_id))


# --- rollbacks with a step in doubt are resolved the same way ----------------------------------


def test_a_show_booking_given_up_in_doubt_is_resolved_then_refunded():
    b = new_bundle()
    b = transition.apply(b, saga.booking_failed(b, "gave up", in_doubt=True))
    assert b.status is S.ROLLING_BACK
    assert _undos(b) == {("resolve", Step.SHOW.value)}
    assert saga.finish(b) is None
    b = transition.apply(b, saga.booking_made(b, TICKETS))  # the re-send learned the tickets
    assert b.status is S.ROLLING_BACK
    assert _undos(b) == {("refund", "t1"), ("refund", "t2")}
    b = undo_everything(b)
    assert transition.apply(b, saga.finish(b)).status is S.FAILED  # type: ignore[arg-type]


def test_a_flight_given_up_in_doubt_that_booked_nothing_fails_without_cancelling():
    b = forward(S.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "gave up", in_doubt=True))
    assert ("resolve", Step.INBOUND.value) in _undos(b)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409 on re-send"))
    assert Step.INBOUND in b.booked_nothing
    assert _undos(b) == {("refund", "t1"), ("refund", "t2")}


def test_a_rollback_in_doubt_cancelled_resolves_before_ending():
    b = forward(S.BOOKING_MADE)
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "gave up", in_doubt=True))
    b = cancel(b)
    assert saga.in_doubt(b) == [Step.INBOUND]
    b = transition.apply(b, saga.flight_booked(b, Leg.INBOUND, INBOUND))
    assert _undos(b) == {("cancel", "inbound"), ("refund", "t1"), ("refund", "t2")}


# --- parked and resumed ------------------------------------------------------------------------


def test_a_parked_cancellation_resumes_into_cancelling():
    b = cancel(forward(S.FINALIZED))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    b = transition.apply(b, saga.compensation_failed(b, "RefundTicket", "payments down"))
    assert b.status is S.COMPENSATION_FAILED
    event = saga.resume_parked(b)
    assert isinstance(event, CancellationResumed)
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, saga.rollback_resumed(b))  # never back into a plain rollback
    b = transition.apply(b, event)
    assert b.status is S.CANCELLING
    b = undo_everything(b)
    assert transition.apply(b, saga.finish(b)).status is S.CANCELLED  # type: ignore[arg-type]


def test_a_parked_rollback_resumes_into_rolling_back():
    b = parked()
    assert isinstance(saga.resume_parked(b), RollbackResumed)
    with pytest.raises(saga.IllegalTransition):
        transition.apply(b, _event(b, CancellationResumed))


def test_a_parked_rollback_cancelled_becomes_a_cancellation():
    b = cancel(parked())
    assert b.status is S.CANCELLING
    assert b.cancellation is not None and b.cancellation.from_status is S.COMPENSATION_FAILED
    assert _undos(b) == {("refund", "t1"), ("refund", "t2")}


def test_a_parked_bundle_accepts_a_late_outcome():
    b, _ = _running_then_cancelled(S.INITIALIZED)
    b = transition.apply(b, saga.compensation_failed(b, "ResolveBooking", "shows down"))
    b = transition.apply(b, saga.booking_made(b, TICKETS))
    assert b.status is S.COMPENSATION_FAILED
    assert _undos(b) == {("refund", "t1"), ("refund", "t2")}

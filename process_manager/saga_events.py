"""The events the saga's steps raise, each with its idempotency key built from business ids only
(`<vip bundle id>:<step>`), so every retry or redelivery of a step raises the same key.

Pure constructors (and the give-up rule, which only picks an event): the decisions of when to
raise them are in `process_manager/saga.py`, how they change a bundle in `transition.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from process_manager.audit import Finding
from process_manager.bundle import Bundle
from process_manager.messages import (
    BookFlight,
    BookingFailed_v1,
    BookingMade_v1,
    BookShowTickets,
    BundleResumed,
    CancelFlightTickets,
    Command,
    CompensationFailed_v1,
    Event,
    FlightBooked_v1,
    FlightBookingFailed_v1,
    FlightTicketsCancelled_v1,
    LedgerDriftDetected_v1,
    Leg,
    RefundTicket,
    ResolveBooking,
    RollbackResumed,
    StepFailed,
    TicketRefunded_v1,
    VipBundleCancelled_v1,
    VipBundleFailed_v1,
    VipBundleFinalized_v1,
    VipBundleInitialized_v1,
)

# Undo steps: their starts are counted per round of undoing (a parked bundle taken up again
# gets a fresh budget).
UNDO_COMMANDS = (RefundTicket, CancelFlightTickets, ResolveBooking)


def new_event(bundle: Bundle, cls: type[Event], key_step: str, **payload: Any) -> Event:
    return cls.create(
        correlation_id=bundle.correlation_id,
        key=bundle.key(key_step),
        vip_bundle_id=bundle.vip_bundle_id,
        **payload,
    )


def initialized(bundle: Bundle) -> Event:
    return new_event(
        bundle,
        VipBundleInitialized_v1,
        "initialized",
        booking_id=bundle.booking_id,
        customer_email=bundle.customer_email,
        number_of_tickets=bundle.number_of_tickets,
        show_id=bundle.show_id,
        passengers=bundle.passengers,
        inbound_flight_id=bundle.inbound_flight_id,
        return_flight_id=bundle.return_flight_id,
    )


def booking_made(bundle: Bundle, ticket_ids: list[str]) -> Event:
    return new_event(
        bundle,
        BookingMade_v1,
        "booking-made",
        booking_id=bundle.booking_id,
        show_id=bundle.show_id,
        ticket_ids=ticket_ids,
    )


def booking_failed(bundle: Bundle, reason: str, in_doubt: bool = False) -> Event:
    return new_event(
        bundle,
        BookingFailed_v1,
        "booking-given-up" if in_doubt else "booking-failed",
        booking_id=bundle.booking_id,
        show_id=bundle.show_id,
        reason=reason,
        in_doubt=in_doubt,
    )


def flight_booked(bundle: Bundle, leg: Leg, ticket_ids: list[str]) -> Event:
    return new_event(
        bundle,
        FlightBooked_v1,
        f"flight-booked-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        ticket_ids=ticket_ids,
    )


def flight_booking_failed(bundle: Bundle, leg: Leg, reason: str, in_doubt: bool = False) -> Event:
    return new_event(
        bundle,
        FlightBookingFailed_v1,
        f"flight-booking-{'given-up' if in_doubt else 'failed'}-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        reason=reason,
        in_doubt=in_doubt,
    )


def step_failed(bundle: Bundle, step: Command, reason: str, out_of_time: bool) -> Event:
    """A forward step failed for a technical reason: note it (it is tried again), or, once the
    bundle's booking deadline has passed (`out_of_time`), give up and roll back."""
    attempt = bundle.step_failures + 1
    if out_of_time:
        given_up = _give_up(
            bundle, step, f"booking deadline passed after {attempt} attempts: {reason}"
        )
        if given_up is not None:
            return given_up
        # Finalizing touches no partner: keep noting it, the reconciler keeps trying.
    return new_event(
        bundle, StepFailed, f"step-failed-{attempt}", step=type(step).__name__, reason=reason
    )


def _give_up(bundle: Bundle, step: Command, reason: str, in_doubt: bool = True) -> Event | None:
    """The failure event that ends a forward step for good, or None for finalizing.

    The step may have reached the partner without an answer: it is in doubt, so a given-up
    flight is undone by looking its tickets up.
    """
    match step:
        case BookShowTickets():
            return booking_failed(bundle, reason, in_doubt=in_doubt)
        case BookFlight(leg=leg):
            return flight_booking_failed(bundle, leg, reason, in_doubt=in_doubt)
    return None


def past_deadline(bundle: Bundle, deadline_s: float, now: datetime) -> bool:
    """Has the bundle been booking for longer than `deadline_s` (waits on partners included)?"""
    return (now - bundle.created_at).total_seconds() > deadline_s


def out_of_time(
    bundle: Bundle, step: Command, deadline_s: float, waiting_on: str, in_doubt: bool = True
) -> Event | None:
    """The booking deadline passed before `step` could be done: give up and roll back. In doubt
    (resolved by re-sending it) only if an earlier try may have reached the partner: a step
    every try of which was turned away unprocessed (a 429, the gate) booked nothing, and
    re-sending it would book what the rollback must then cancel."""
    reason = f"booking deadline of {deadline_s:g} s passed, the step still waiting on {waiting_on}"
    return _give_up(bundle, step, reason, in_doubt)


def step_name(command: Command) -> str:
    """Names one step of a bundle: `BookFlight:inbound`, `RefundTicket:<ticket id>`."""
    args = [str(v) for k, v in command.model_dump(mode="json").items() if k != "vip_bundle_id"]
    return ":".join([type(command).__name__, *args])


def counted_per_round(command: Command) -> bool:
    """An undo's starts are counted per round of undoing, so a parked bundle taken up again
    gets a fresh budget."""
    return isinstance(command, UNDO_COMMANDS)


def start_key(bundle: Bundle, command: Command) -> str:
    """The counter of `command`'s starts (the store builds the same name in its start script)."""
    name = step_name(command)
    return f"{name}:round-{bundle.compensation_failures}" if counted_per_round(command) else name


def never_finished(bundle: Bundle, command: Command, starts: int) -> Event | None:
    """A step started `starts` times and never finished (its worker died each time): give up.

    A forward step rolls the saga back (in doubt: it may have reached the partner); an undo
    parks the bundle for the reconciler's later rounds. Finalizing calls no partner: None.
    """
    reason = f"started {starts} times and never finished (worker lost each time?)"
    if isinstance(command, UNDO_COMMANDS):
        return compensation_failed(bundle, type(command).__name__, reason)
    return _give_up(bundle, command, reason)


def ticket_refunded(bundle: Bundle, ticket_id: str) -> Event:
    return new_event(bundle, TicketRefunded_v1, f"ticket-refunded-{ticket_id}", ticket_id=ticket_id)


def flight_tickets_cancelled(bundle: Bundle, leg: Leg, ticket_ids: list[str]) -> Event:
    return new_event(
        bundle,
        FlightTicketsCancelled_v1,
        f"flight-cancelled-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        ticket_ids=ticket_ids,
    )


def compensation_failed(bundle: Bundle, step: str, reason: str) -> Event:
    n = bundle.compensation_failures + 1
    return new_event(
        bundle, CompensationFailed_v1, f"compensation-failed-{n}", step=step, reason=reason
    )


def rollback_resumed(bundle: Bundle, by: str | None = None) -> Event:
    return new_event(
        bundle, RollbackResumed, f"rollback-resumed-{bundle.compensation_failures}", by=by
    )


def resumed(bundle: Bundle, by: str) -> Event:
    """An operator's "take this bundle up now" on a bundle in flight (history only)."""
    return new_event(bundle, BundleResumed, f"resumed-{bundle.version}", by=by)


def finalized(bundle: Bundle) -> Event:
    return new_event(
        bundle,
        VipBundleFinalized_v1,
        "finalized",
        booking_id=bundle.booking_id,
        ticket_ids=bundle.ticket_ids,
        inbound_ticket_ids=bundle.flight_tickets.get(Leg.INBOUND, []),
        return_ticket_ids=bundle.flight_tickets.get(Leg.RETURN, []),
    )


def failed(bundle: Bundle) -> Event:
    reason = bundle.failure.reason if bundle.failure else "rolled back"
    return _undone(bundle, VipBundleFailed_v1, "failed", reason)


def cancelled(bundle: Bundle) -> Event:
    reason = bundle.cancellation.reason if bundle.cancellation else "cancelled"
    return _undone(bundle, VipBundleCancelled_v1, "cancelled", reason)


def _undone(bundle: Bundle, cls: type[Event], key_step: str, reason: str) -> Event:
    """The final event of an undone bundle: why, and what its undos refunded and cancelled."""
    return new_event(
        bundle,
        cls,
        key_step,
        reason=reason,
        refunded_ticket_ids=bundle.refunded_ticket_ids,
        cancelled_flight_ticket_ids=bundle.cancelled_flight_ticket_ids(),
    )


def drift_detected(bundle: Bundle, finding: Finding) -> Event | None:
    """The event for a finding not yet recorded on this bundle, as audited; else None."""
    if finding.status is not bundle.status or any(d.key == finding.key for d in bundle.drift):
        return None
    return new_event(
        bundle,
        LedgerDriftDetected_v1,
        f"drift-{finding.key}",
        kind=finding.kind.value,
        finding_key=finding.key,
        description=finding.description,
        record=finding.record,
    )

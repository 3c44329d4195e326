"""The saga's decisions, in one place: read `TRANSITIONS` first, it is the whole state machine.

Pure functions over `Bundle` and events: no Celery, Redis or HTTP here, so every rule is tested
without a broker. A message seen twice is recognised here too: replaying an event that was
already applied is an `IllegalTransition`, which the caller treats as "already done".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from process_manager.bundle import (
    IN_FLIGHT,
    UNDOING,
    Bundle,
    Status,
)
from process_manager.messages import (
    BookFlight,
    BookingFailed_v1,
    BookingMade_v1,
    BookShowTickets,
    BundleResumed,
    CancelFlightTickets,
    CancellationResumed,
    Command,
    CompensationFailed_v1,
    Event,
    FinalizeVipBundle,
    FlightBooked_v1,
    FlightBookingFailed_v1,
    FlightTicketsCancelled_v1,
    LedgerDriftDetected_v1,
    Leg,
    RefundTicket,
    ResolveBooking,
    RollbackResumed,
    Step,
    StepFailed,
    TicketRefunded_v1,
    VipBundleCancellationRequested_v1,
    VipBundleCancelled_v1,
    VipBundleFailed_v1,
    VipBundleFinalized_v1,
)
from process_manager.saga_events import (  # noqa: F401  (re-exported: callers write saga.booking_made(...))
    UNDO_COMMANDS,
    booking_failed,
    booking_made,
    cancelled,
    compensation_failed,
    counted_per_round,
    drift_detected,
    failed,
    finalized,
    flight_booked,
    flight_booking_failed,
    flight_tickets_cancelled,
    initialized,
    never_finished,
    new_event,
    out_of_time,
    past_deadline,
    resumed,
    rollback_resumed,
    start_key,
    step_failed,
    step_name,
    ticket_refunded,
)

S = Status

# (state, event) -> next state. Anything not listed is refused.
TRANSITIONS: dict[tuple[Status, type[Event]], Status] = {
    (S.INITIALIZED, BookingMade_v1): S.BOOKING_MADE,
    (S.INITIALIZED, BookingFailed_v1): S.ROLLING_BACK,
    (S.BOOKING_MADE, FlightBooked_v1): S.INBOUND_BOOKED,
    (S.BOOKING_MADE, FlightBookingFailed_v1): S.ROLLING_BACK,
    (S.INBOUND_BOOKED, FlightBooked_v1): S.RETURN_BOOKED,
    (S.INBOUND_BOOKED, FlightBookingFailed_v1): S.ROLLING_BACK,
    (S.RETURN_BOOKED, VipBundleFinalized_v1): S.FINALIZED,
    # A technical failure of a forward step is noted; the step is tried again later.
    (S.INITIALIZED, StepFailed): S.INITIALIZED,
    (S.BOOKING_MADE, StepFailed): S.BOOKING_MADE,
    (S.INBOUND_BOOKED, StepFailed): S.INBOUND_BOOKED,
    (S.RETURN_BOOKED, StepFailed): S.RETURN_BOOKED,
    (S.ROLLING_BACK, TicketRefunded_v1): S.ROLLING_BACK,
    (S.ROLLING_BACK, FlightTicketsCancelled_v1): S.ROLLING_BACK,
    (S.ROLLING_BACK, CompensationFailed_v1): S.COMPENSATION_FAILED,
    (S.ROLLING_BACK, VipBundleFailed_v1): S.FAILED,
    # A parked bundle still records the undos that did finish, and is resumed by the reconciler
    # (or an operator) into the undoing it was parked from.
    (S.COMPENSATION_FAILED, TicketRefunded_v1): S.COMPENSATION_FAILED,
    (S.COMPENSATION_FAILED, FlightTicketsCancelled_v1): S.COMPENSATION_FAILED,
    (S.COMPENSATION_FAILED, CompensationFailed_v1): S.COMPENSATION_FAILED,
    (S.COMPENSATION_FAILED, RollbackResumed): S.ROLLING_BACK,
    # An operator's resume of a bundle in flight: noted (who, when), the state stays.
    **{(s, BundleResumed): s for s in sorted(IN_FLIGHT)},
    (S.COMPENSATION_FAILED, CancellationResumed): S.CANCELLING,
    # Cancelling on request: from anywhere but `failed` (nothing left) and `cancel*` (idempotent).
    (S.INITIALIZED, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.BOOKING_MADE, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.INBOUND_BOOKED, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.RETURN_BOOKED, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.ROLLING_BACK, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.COMPENSATION_FAILED, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.FINALIZED, VipBundleCancellationRequested_v1): S.CANCELLING,
    (S.CANCELLING, TicketRefunded_v1): S.CANCELLING,
    (S.CANCELLING, FlightTicketsCancelled_v1): S.CANCELLING,
    (S.CANCELLING, CompensationFailed_v1): S.COMPENSATION_FAILED,
    (S.CANCELLING, VipBundleCancelled_v1): S.CANCELLED,
    # Late outcomes: while undoing, a booking step in doubt (it was at the partner when the
    # cancel came, or it was given up without an answer) reports, or is resolved by re-sending
    # it. Its tickets are recorded (and so become undos) or it is known to have booked nothing.
    **{
        (state, event): state
        for state in (S.ROLLING_BACK, S.CANCELLING, S.COMPENSATION_FAILED)
        for event in (BookingMade_v1, BookingFailed_v1, FlightBooked_v1, FlightBookingFailed_v1)
    },
    # The audit found a partner's records disagreeing with a settled bundle: noted, once per
    # finding (a repeat is refused), the status stays (process_manager/audit.py).
    (S.FINALIZED, LedgerDriftDetected_v1): S.FINALIZED,
    (S.FAILED, LedgerDriftDetected_v1): S.FAILED,
    (S.CANCELLED, LedgerDriftDetected_v1): S.CANCELLED,
}

# The forward path: which step runs in which state, in chain order.
FORWARD: list[tuple[Status, Callable[[str], Command]]] = [
    (S.INITIALIZED, lambda bid: BookShowTickets(vip_bundle_id=bid)),
    (S.BOOKING_MADE, lambda bid: BookFlight(vip_bundle_id=bid, leg=Leg.INBOUND)),
    (S.INBOUND_BOOKED, lambda bid: BookFlight(vip_bundle_id=bid, leg=Leg.RETURN)),
    (S.RETURN_BOOKED, lambda bid: FinalizeVipBundle(vip_bundle_id=bid)),
]
LEG_BOOKED_FROM = {Leg.INBOUND: S.BOOKING_MADE, Leg.RETURN: S.INBOUND_BOOKED}
# The booking step that runs in each forward state (finalizing books nothing).
STEP_IN = {S.INITIALIZED: Step.SHOW, S.BOOKING_MADE: Step.INBOUND, S.INBOUND_BOOKED: Step.RETURN}
LEG_OF_STEP = {Step.INBOUND: Leg.INBOUND, Step.RETURN: Leg.RETURN}


class IllegalTransition(Exception):
    """The event does not apply to the bundle as stored (a late, duplicate or foreign message)."""


# --- what to do next ----------------------------------------------------------------------------


def remaining_steps(bundle: Bundle) -> list[Command]:
    """The forward steps still to run from the stored state (the rest of the chain)."""
    states = [state for state, _ in FORWARD]
    if bundle.status not in states:
        return []
    start = states.index(bundle.status)
    steps = [make(bundle.vip_bundle_id) for _, make in FORWARD[start:]]
    # The return-flight step finalizes in the same task (finalizing calls no partner), so
    # finalizing is a step of its own only for a bundle found `return_booked`.
    return steps if len(steps) == 1 else steps[:-1]


def pending_compensations(bundle: Bundle) -> list[Command]:
    """What must still be undone: steps in doubt resolved first, then newest first: return
    flight, inbound flight, then tickets. Empty unless the bundle is undoing."""
    if bundle.status not in UNDOING:
        return []
    bid = bundle.vip_bundle_id
    undo: list[Command] = [ResolveBooking(vip_bundle_id=bid, step=s) for s in in_doubt(bundle)]
    undo += [
        CancelFlightTickets(vip_bundle_id=bid, leg=leg)
        for leg in (Leg.RETURN, Leg.INBOUND)
        if leg not in bundle.cancelled_legs and bundle.flight_tickets.get(leg)
    ]
    undo += [
        RefundTicket(vip_bundle_id=bid, ticket_id=t)
        for t in bundle.ticket_ids
        if t not in bundle.refunded_ticket_ids
    ]
    return undo


def is_pending(bundle: Bundle, command: Command) -> bool:
    """Is `command` still to be done? False means it ran already or the saga moved on."""
    match command:
        case RefundTicket() | CancelFlightTickets() | ResolveBooking():
            return command in pending_compensations(bundle)
        case _:
            steps = remaining_steps(bundle)
            return bool(steps) and steps[0] == command


def runs_in(command: Command) -> frozenset[Status]:
    """The statuses `command` may start in (the store checks this and counts the start in one
    atomic step, so once a bundle is `cancelling` no forward step can start any more)."""
    if isinstance(command, UNDO_COMMANDS):
        return UNDOING
    return frozenset(state for state, make in FORWARD if make(command.vip_bundle_id) == command)


# --- steps in doubt: booked or not? -------------------------------------------------------------


def step_of(command: Command) -> Step | None:
    """The booking step a forward command (or the resolve of one) runs."""
    match command:
        case BookShowTickets():
            return Step.SHOW
        case BookFlight(leg=Leg.INBOUND):
            return Step.INBOUND
        case BookFlight(leg=Leg.RETURN):
            return Step.RETURN
        case ResolveBooking(step=step):
            return step
    return None


def booking_command(vip_bundle_id: str, step: Step) -> Command:
    if step is Step.SHOW:
        return BookShowTickets(vip_bundle_id=vip_bundle_id)
    return BookFlight(vip_bundle_id=vip_bundle_id, leg=LEG_OF_STEP[step])


def settled(bundle: Bundle, step: Step) -> bool:
    """Do we know what `step` booked: its tickets, or that it booked nothing?"""
    failure = bundle.failure
    if failure is not None and failure.step == step and not failure.in_doubt:
        return True  # refused (409) when it ran
    if step in bundle.booked_nothing:
        return True
    if step is Step.SHOW:
        return bool(bundle.ticket_ids)
    return bool(bundle.flight_tickets.get(LEG_OF_STEP[step]))


def step_at_cancel(bundle: Bundle) -> Step | None:
    """The booking step that was next when the bundle was cancelled (it may have been running)."""
    if bundle.cancellation is None:
        return None
    return STEP_IN.get(bundle.cancellation.from_status)


def awaited(bundle: Bundle) -> list[Step]:
    """Booking steps whose outcome an undoing bundle still accepts: the step given up without
    an answer, and the step that was next when the cancel came, until each is settled."""
    if bundle.status not in UNDOING:
        return []
    failure = bundle.failure
    candidates = [Step(failure.step)] if failure is not None and failure.in_doubt else []
    if (step := step_at_cancel(bundle)) is not None:
        candidates.append(step)
    return [s for s in dict.fromkeys(candidates) if not settled(bundle, s)]


def started(bundle: Bundle, step: Step) -> bool:
    """Did `step` start at least once? Once the bundle is undoing it cannot start any more, so
    a count read after that is final."""
    return bundle.starts.get(start_key(bundle, booking_command(bundle.vip_bundle_id, step)), 0) > 0


def in_doubt(bundle: Bundle) -> list[Step]:
    """Steps that may have booked something we do not know of: they must be resolved (re-sent
    with the same idempotency key) before the bundle can end. A step given up without an answer
    is in doubt; the step that was next at cancel time is in doubt if it ever started."""
    failure = bundle.failure
    given_up = failure.step if failure is not None and failure.in_doubt else None
    return [s for s in awaited(bundle) if s == given_up or started(bundle, s)]


def accepts_outcome(bundle: Bundle, command: Command) -> bool:
    """Does the bundle still take the outcome (tickets, or a refusal) of this booking step?

    In the forward path: when it is the current step. While undoing: when the step is awaited
    (a late answer of the original call, or the answer to its resolve); it is then recorded and
    what it booked is undone.
    """
    if isinstance(command, RefundTicket | CancelFlightTickets):
        return is_pending(bundle, command)
    if bundle.status in UNDOING:
        return (step := step_of(command)) is not None and step in awaited(bundle)
    return not isinstance(command, ResolveBooking) and is_pending(bundle, command)


def finish(bundle: Bundle) -> Event | None:
    """With nothing left to undo or resolve: `failed` after a rollback, `cancelled` after a
    cancel. None while anything is pending (or when the bundle is not undoing)."""
    if pending_compensations(bundle):
        return None
    if bundle.status is S.ROLLING_BACK:
        return failed(bundle)
    if bundle.status is S.CANCELLING:
        return cancelled(bundle)
    return None


# --- cancelling on request ----------------------------------------------------------------------


@dataclass(frozen=True)
class CancelRefused:
    """A cancel the bundle cannot take (it already failed: nothing is left booked)."""

    reason: str


def cancel(bundle: Bundle, reason: str, who: str | None = None) -> Event | CancelRefused | None:
    """What a cancel request does: the event to record, a refusal, or None when the bundle is
    already `cancelling`/`cancelled` (cancelling is idempotent: nothing new happens).

    A parked cancellation asked again is taken up now, like a resume.
    """
    match bundle.status:
        case S.FAILED:
            return CancelRefused(f"vip bundle {bundle.vip_bundle_id} already failed")
        case S.CANCELLING | S.CANCELLED:
            return None
        case S.COMPENSATION_FAILED if bundle.cancellation is not None:
            return resume_parked(bundle)
    return new_event(
        bundle,
        VipBundleCancellationRequested_v1,
        "cancellation-requested",
        reason=reason,
        from_status=bundle.status.value,
        requested_by=who,
    )


def resume_parked(bundle: Bundle, by: str | None = None) -> Event:
    """Take a parked bundle up again, into the undoing it was parked from; `by` names the
    operator who asked (None: the reconciler)."""
    if bundle.cancellation is not None:
        key = f"cancellation-resumed-{bundle.compensation_failures}"
        return new_event(bundle, CancellationResumed, key, by=by)
    return rollback_resumed(bundle, by)


# The outcomes of a booking step: late ones (recorded while undoing) leave undo work.
OUTCOMES = (BookingMade_v1, BookingFailed_v1, FlightBooked_v1, FlightBookingFailed_v1)

"""The saga's decisions, in one place: read `TRANSITIONS` first, it is the whole state machine.

Pure functions over `Bundle` and events: no Celery, Redis or HTTP here, so every rule is tested
without a broker. A message seen twice is recognised here too: replaying an event that was
already applied is an `IllegalTransition`, which the caller treats as "already done".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from process_manager.audit import Finding
from process_manager.bundle import (
    IN_FLIGHT,
    UNDOING,
    Bundle,
    Cancellation,
    Drift,
    Failure,
    HistoryEntry,
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
    VipBundleInitialized_v1,
    utcnow,
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
UNDO_COMMANDS = (RefundTicket, CancelFlightTickets, ResolveBooking)


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
    return _new(
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
        return _new(bundle, CancellationResumed, key, by=by)
    return rollback_resumed(bundle, by)


# --- events the steps raise (idempotency keys from business ids only) --------------------------


def _new(bundle: Bundle, cls: type[Event], key_step: str, **payload: Any) -> Event:
    return cls.create(
        correlation_id=bundle.correlation_id,
        key=bundle.key(key_step),
        vip_bundle_id=bundle.vip_bundle_id,
        **payload,
    )


def initialized(bundle: Bundle) -> Event:
    return _new(
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
    return _new(
        bundle,
        BookingMade_v1,
        "booking-made",
        booking_id=bundle.booking_id,
        show_id=bundle.show_id,
        ticket_ids=ticket_ids,
    )


def booking_failed(bundle: Bundle, reason: str, in_doubt: bool = False) -> Event:
    return _new(
        bundle,
        BookingFailed_v1,
        "booking-given-up" if in_doubt else "booking-failed",
        booking_id=bundle.booking_id,
        show_id=bundle.show_id,
        reason=reason,
        in_doubt=in_doubt,
    )


def flight_booked(bundle: Bundle, leg: Leg, ticket_ids: list[str]) -> Event:
    return _new(
        bundle,
        FlightBooked_v1,
        f"flight-booked-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        ticket_ids=ticket_ids,
    )


def flight_booking_failed(bundle: Bundle, leg: Leg, reason: str, in_doubt: bool = False) -> Event:
    return _new(
        bundle,
        FlightBookingFailed_v1,
        f"flight-booking-{'given-up' if in_doubt else 'failed'}-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        reason=reason,
        in_doubt=in_doubt,
    )


def step_failed(bundle: Bundle, step: Command, reason: str, max_attempts: int) -> Event:
    """A forward step failed for a technical reason: note it, or give up and roll back."""
    attempt = bundle.step_failures + 1
    if attempt >= max_attempts:
        given_up = _give_up(bundle, step, f"gave up after {attempt} attempts: {reason}")
        if given_up is not None:
            return given_up
        # Finalizing touches no partner: keep noting it, the reconciler keeps trying.
    return _new(
        bundle, StepFailed, f"step-failed-{attempt}", step=type(step).__name__, reason=reason
    )


def _give_up(bundle: Bundle, step: Command, reason: str) -> Event | None:
    """The failure event that ends a forward step for good, or None for finalizing.

    The step may have reached the partner without an answer: it is in doubt, so a given-up
    flight is undone by looking its tickets up.
    """
    match step:
        case BookShowTickets():
            return booking_failed(bundle, reason, in_doubt=True)
        case BookFlight(leg=leg):
            return flight_booking_failed(bundle, leg, reason, in_doubt=True)
    return None


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
    return _new(bundle, TicketRefunded_v1, f"ticket-refunded-{ticket_id}", ticket_id=ticket_id)


def flight_tickets_cancelled(bundle: Bundle, leg: Leg, ticket_ids: list[str]) -> Event:
    return _new(
        bundle,
        FlightTicketsCancelled_v1,
        f"flight-cancelled-{leg}",
        leg=leg,
        flight_id=bundle.flight_id(leg),
        ticket_ids=ticket_ids,
    )


def compensation_failed(bundle: Bundle, step: str, reason: str) -> Event:
    n = bundle.compensation_failures + 1
    return _new(bundle, CompensationFailed_v1, f"compensation-failed-{n}", step=step, reason=reason)


def rollback_resumed(bundle: Bundle, by: str | None = None) -> Event:
    return _new(bundle, RollbackResumed, f"rollback-resumed-{bundle.compensation_failures}", by=by)


def resumed(bundle: Bundle, by: str) -> Event:
    """An operator's "take this bundle up now" on a bundle in flight (history only)."""
    return _new(bundle, BundleResumed, f"resumed-{bundle.version}", by=by)


def finalized(bundle: Bundle) -> Event:
    return _new(
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
    return _new(
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
    return _new(
        bundle,
        LedgerDriftDetected_v1,
        f"drift-{finding.key}",
        kind=finding.kind.value,
        finding_key=finding.key,
        description=finding.description,
        record=finding.record,
    )


# --- applying an event to the bundle ------------------------------------------------------------


def apply(bundle: Bundle, event: Event, now: datetime | None = None) -> Bundle:
    """The bundle after `event`, with its history entry; `IllegalTransition` if it does not fit."""
    target = TRANSITIONS.get((bundle.status, type(event)))
    if target is None:
        raise IllegalTransition(f"{event.name()} does not apply to a {bundle.status} bundle")
    changes = _changes(bundle, event)
    now = now or utcnow()
    entry = HistoryEntry(
        at=now,
        event=event.name(),
        from_status=bundle.status,
        to_status=target,
        event_id=event.header.event_id,
        detail=_detail(event),
    )
    return bundle.model_copy(
        update={
            **changes,
            "status": target,
            "version": bundle.version + 1,
            "updated_at": now,
            "history": _history(bundle.history, entry),
        }
    )


# A parked bundle's retry rounds: taken up again, and (no progress) parked again.
RESUMES = frozenset({RollbackResumed.name(), CancellationResumed.name()})
PARKS = frozenset({CompensationFailed_v1.name()})


def _same(a: HistoryEntry, b: HistoryEntry) -> bool:
    return (a.event, a.from_status, a.to_status) == (b.event, b.from_status, b.to_status)


def _history(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """The history with `entry` appended; but a retry round that ends parked again with no
    progress (taken up, then parked at once, nothing undone between) is folded into the
    previous round's two entries, which count it. An endless retry loop keeps a tail of
    [resumed xN, parked xN] (plus the open round's resume), not two entries a round."""
    if entry.event in PARKS and len(history) >= 3:
        resumed, parked, again = history[-3:]
        if (
            again.event in RESUMES
            and _same(resumed, again)
            and parked.event in PARKS
            and _same(parked, entry)
            and resumed.repeats == parked.repeats
        ):
            return [
                *history[:-3],
                resumed.model_copy(
                    update={
                        "repeats": resumed.repeats + 1,
                        "last_at": again.at,
                        "detail": again.detail,
                    }
                ),
                parked.model_copy(
                    update={
                        "repeats": parked.repeats + 1,
                        "last_at": entry.at,
                        "detail": entry.detail,
                    }
                ),
            ]
    return [*history, entry]


def apply_initial(bundle: Bundle, event: Event) -> Bundle:
    """The first stored version of a bundle, its history opened by `VipBundleInitialized_v1`."""
    entry = HistoryEntry(
        at=bundle.created_at,
        event=event.name(),
        from_status=None,
        to_status=S.INITIALIZED,
        event_id=event.header.event_id,
    )
    return bundle.model_copy(
        update={
            "status": S.INITIALIZED,
            "version": 1,
            "updated_at": bundle.created_at,
            "history": [entry],
        }
    )


def _changes(bundle: Bundle, event: Event) -> dict[str, Any]:
    """The fields an event sets, after checking it belongs to this bundle's current step."""
    if bundle.status in UNDOING and isinstance(event, OUTCOMES):
        return _late_outcome(bundle, event)
    match event:
        case BookingMade_v1(ticket_ids=ids):
            return {"ticket_ids": ids}
        case BookingFailed_v1(reason=reason, in_doubt=in_doubt):
            return {"failure": Failure(step=Step.SHOW, reason=reason, in_doubt=in_doubt)}
        case FlightBooked_v1(leg=leg, ticket_ids=ids):
            _check_leg(bundle, leg)
            return {"flight_tickets": {**bundle.flight_tickets, leg: ids}}
        case FlightBookingFailed_v1(leg=leg, reason=reason, in_doubt=in_doubt):
            _check_leg(bundle, leg)
            failure = Failure(step=f"book_{leg}_flight", reason=reason, leg=leg, in_doubt=in_doubt)
            return {"failure": failure}
        case TicketRefunded_v1(ticket_id=t):
            if t not in bundle.ticket_ids or t in bundle.refunded_ticket_ids:
                raise IllegalTransition(f"ticket {t} is not waiting for a refund")
            return {"refunded_ticket_ids": [*bundle.refunded_ticket_ids, t]}
        case FlightTicketsCancelled_v1(leg=leg):
            if leg in bundle.cancelled_legs or not bundle.flight_tickets.get(leg):
                raise IllegalTransition(f"{leg} flight is not waiting for a cancellation")
            return {"cancelled_legs": [*bundle.cancelled_legs, leg]}
        case StepFailed(reason=reason):
            return {"step_failures": bundle.step_failures + 1, "last_error": reason}
        case CompensationFailed_v1(step=step, reason=reason):
            return {
                "compensation_failures": bundle.compensation_failures + 1,
                "last_error": f"{step}: {reason}",
            }
        case VipBundleFailed_v1() | VipBundleCancelled_v1():
            if pending_compensations(bundle):
                raise IllegalTransition("compensations are still pending")
            return {}
        case VipBundleCancellationRequested_v1(reason=reason, from_status=from_status):
            if from_status != bundle.status:
                raise IllegalTransition(
                    f"cancel decided for {from_status}, bundle is {bundle.status}"
                )
            cancellation = Cancellation(
                reason=reason,
                requested_at=event.header.published_at,
                from_status=bundle.status,
                requested_by=event.requested_by,
            )
            return {"cancellation": cancellation}
        case RollbackResumed() if bundle.cancellation is not None:
            raise IllegalTransition("a parked cancellation resumes as a cancellation")
        case CancellationResumed() if bundle.cancellation is None:
            raise IllegalTransition("a parked rollback resumes as a rollback")
        case LedgerDriftDetected_v1(
            finding_key=key, kind=kind, description=description, record=record, header=header
        ):
            if any(d.key == key for d in bundle.drift):
                raise IllegalTransition(f"drift {key} is already recorded")
            drift = Drift(
                key=key, kind=kind, description=description, record=record, at=header.published_at
            )
            return {"drift": [*bundle.drift, drift]}
        case _:
            return {}


OUTCOMES = (BookingMade_v1, BookingFailed_v1, FlightBooked_v1, FlightBookingFailed_v1)


def _late_outcome(bundle: Bundle, event: Event) -> dict[str, Any]:
    """An awaited booking step reports while the bundle is undoing: record what it booked (to
    be undone), or that it booked nothing; a give-up without an answer leaves it in doubt."""
    match event:
        case BookingMade_v1() | BookingFailed_v1():
            step = Step.SHOW
        case FlightBooked_v1(leg=leg) | FlightBookingFailed_v1(leg=leg):
            step = Step.INBOUND if leg is Leg.INBOUND else Step.RETURN
    if step not in awaited(bundle):
        raise IllegalTransition(f"{step} is not awaited by a {bundle.status} bundle")
    match event:
        case BookingMade_v1(ticket_ids=ids):
            return {"ticket_ids": ids}
        case FlightBooked_v1(leg=leg, ticket_ids=ids):
            return {"flight_tickets": {**bundle.flight_tickets, leg: ids}}
        case BookingFailed_v1(in_doubt=False) | FlightBookingFailed_v1(in_doubt=False):
            return {"booked_nothing": [*bundle.booked_nothing, step]}
    return {}  # given up again without an answer: still in doubt, resolved by re-sending


def _check_leg(bundle: Bundle, leg: Leg) -> None:
    if LEG_BOOKED_FROM[leg] != bundle.status:
        raise IllegalTransition(f"{leg} flight is not the step of a {bundle.status} bundle")


def _detail(event: Event) -> str | None:
    for field in ("reason", "ticket_id", "leg", "finding_key", "by"):
        value = getattr(event, field, None)
        if value is not None:
            return f"{field}={value}"
    return None

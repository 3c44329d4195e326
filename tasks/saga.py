"""The saga's canvas: start here.

Forward:   book_show_tickets -> book_flight(inbound) -> book_flight(return, then finalize)
           one flat chain, `on_step_failed` linked as error callback on every task of it.
Failure:   on_step_failed records BookingFailed_v1 / FlightBookingFailed_v1 (bundle ->
           rolling_back, event on the stream) and hands the event to the process manager.
Rollback:  handle_event reads the bundle from Redis and sends the undos at once:
           [refund the tickets (one task for all), resolve steps in doubt, cancel return
           flight, cancel inbound flight]; the undo that leaves nothing pending marks the bundle
           failed (from the stored state, not a chord counter, so a lost or repeated undo
           cannot leave it hanging).
Cancel:    tasks/cancel.py records the request (bundle -> cancelling; no forward step starts
           any more) and sends the same undos; a step that was at the partner reports late, its
           tickets join the undos; the last undo marks the bundle cancelled.
The reconciler (tasks/reconcile.py) restarts any of these from the stored state when a
message or callback was lost, so no bundle depends on a callback alone.
"""

from __future__ import annotations

from typing import Any

from celery import chain
from celery.canvas import Signature

from adapters import telemetry
from adapters.partners import NoFlightTicketsAvailable, ShowSoldOut
from adapters.settings import get_settings
from process_manager import saga
from process_manager.bundle import UNDOING, Bundle, utcnow
from process_manager.messages import (
    BookFlight,
    BookShowTickets,
    CancelFlightTickets,
    Command,
    FinalizeVipBundle,
    InvalidRequest,
    Leg,
    RefundTicket,
    ResolveBooking,
    StepFailed,
    parse_event,
)
from tasks.celery_app import app, store
from tasks.compensation import cancel_flight_tickets, refund_tickets, resolve_booking
from tasks.deferral import retry_later
from tasks.flights import book_flight
from tasks.shows import book_show_tickets
from tasks.steps import PARTNER_OF_STEP, due, finalize, finish_rollback, hand_over, log

# --- commands <-> Celery signatures -------------------------------------------------------------


def signature(command: Command) -> Signature:
    bid = command.vip_bundle_id
    match command:
        case BookShowTickets():
            return book_show_tickets.si(bid)
        case BookFlight(leg=leg):
            return book_flight.si(bid, leg.value)
        case FinalizeVipBundle():
            return finalize_bundle.si(bid)
        case RefundTicket(ticket_id=ticket_id):
            return refund_tickets.si(bid, [ticket_id])
        case CancelFlightTickets(leg=leg):
            return cancel_flight_tickets.si(bid, leg.value)
        case ResolveBooking(step=step):
            return resolve_booking.si(bid, step.value)
    raise TypeError(f"no task for {command!r}")


def command_of(task_name: str, args: list[Any]) -> Command | None:
    """The forward command a failed task was running (from the errback's request)."""
    bid = args[0]
    match task_name:
        case "vip_bundle.book_show_tickets":
            return BookShowTickets(vip_bundle_id=bid)
        case "vip_bundle.book_flight":
            return BookFlight(vip_bundle_id=bid, leg=Leg(args[1]))
        case "vip_bundle.finalize":
            return FinalizeVipBundle(vip_bundle_id=bid)
    return None


# --- forward ------------------------------------------------------------------------------------


def run_forward(bundle: Bundle) -> None:
    """Send the rest of the forward chain, from the bundle's stored state."""
    steps = saga.remaining_steps(bundle)
    if steps:
        flow = chain(*[signature(c) for c in steps])
        flow.on_error(on_step_failed.s(bundle.vip_bundle_id))
        flow.apply_async()


@app.task(name="vip_bundle.finalize", ignore_result=True)
def finalize_bundle(vip_bundle_id: str) -> None:
    """Both flights are booked: the bundle is done (`VipBundleFinalized_v1`).

    The return-flight step finalizes by itself; this task is for a bundle the reconciler
    finds `return_booked`.
    """
    if (bundle := due(FinalizeVipBundle(vip_bundle_id=vip_bundle_id))) is not None:
        finalize(bundle)


@app.task(name="vip_bundle.on_step_failed", ignore_result=True)
def on_step_failed(request: Any, exc: BaseException, traceback: Any, vip_bundle_id: str) -> None:
    """Error callback of the forward chain (runs in the worker of the failed task).

    A refusal (sold out) fails the step for good and starts the rollback (or, in a bundle
    cancelled meanwhile, is recorded as "booked nothing"). A technical failure is noted and
    the step comes back after a backoff (tasks/deferral.py), until the bundle's booking
    deadline passes: then the saga gives up. In a bundle cancelled meanwhile it is not
    recorded: the step stays in doubt and is resolved.
    """
    command = command_of(request.task, list(request.args or []))
    if command is None:
        return
    # Celery calls it in the failed task's process, as a function: a span of its own, under
    # the failed step's.
    with telemetry.span(
        "vip_bundle.on_step_failed", id=vip_bundle_id, step=request.task, error=type(exc).__name__
    ):
        _step_failed(command, exc, vip_bundle_id)


def _step_failed(command: Command, exc: BaseException, vip_bundle_id: str) -> None:
    match exc, command:
        case ShowSoldOut(), BookShowTickets():
            refusal = lambda b: saga.booking_failed(b, str(exc))  # noqa: E731
            decide = lambda b: refusal(b) if saga.accepts_outcome(b, command) else None  # noqa: E731
        case NoFlightTicketsAvailable(), BookFlight(leg=leg):
            refusal = lambda b: saga.flight_booking_failed(b, leg, str(exc))  # noqa: E731
            decide = lambda b: refusal(b) if saga.accepts_outcome(b, command) else None  # noqa: E731
        case _:
            deadline_s = get_settings().booking_deadline_s
            reason = f"{type(exc).__name__}: {exc}"
            decide = lambda b: (  # noqa: E731
                saga.step_failed(b, command, reason, saga.past_deadline(b, deadline_s, utcnow()))
                if saga.is_pending(b, command)
                else None
            )
    applied = store().apply(vip_bundle_id, decide)
    telemetry.annotate(outcome=applied.event.name() if applied.event else "not_recorded")
    hand_over(applied)
    if isinstance(applied.event, StepFailed) and (partner := PARTNER_OF_STEP.get(type(command))):
        retry_later(vip_bundle_id, partner, applied.bundle.step_failures)


# --- rollback: the process manager ----------------------------------------------------------------


@app.task(name="vip_bundle.process_manager.handle_event", ignore_result=True)
def handle_event(message: dict[str, Any]) -> None:
    """Consume an event that leaves undo work (a failure, or a late outcome recorded while
    undoing): read the bundle's state and dispatch what is pending."""
    try:
        event = parse_event(message)
    except InvalidRequest as exc:
        log.error("process manager: refused a message: %s", exc)
        return
    if not isinstance(event, saga.OUTCOMES):
        return
    first, bundle = store().first_time_get(event.header.event_id, event.vip_bundle_id)
    if not first:
        log.info("process manager: %s seen before, skipped", event.header.event_id)
        return
    if bundle is None:
        log.error("process manager: %s names no stored bundle", event.header.event_id)
    elif bundle.status in UNDOING:
        telemetry.annotate(bundle, event=event.name(), outcome=str(bundle.status))
        run_rollback(bundle)


def run_rollback(bundle: Bundle) -> None:
    """Undo (and resolve steps in doubt), all in parallel; with nothing left, end the bundle.

    `bundle` must have been read after it started undoing, so its step counters are final.
    """
    undo = undo_signatures(saga.pending_compensations(bundle))
    # Independent messages, not a group: nobody waits on their results, and the first one
    # leaves at once instead of after the group's preparation.
    for task in undo:
        task.apply_async()
    if not undo:
        finish_rollback(bundle)


def undo_signatures(commands: list[Command]) -> list[Signature]:
    """A task per undo, but one for all of a bundle's ticket refunds (their calls run side by
    side in it): a rollback's undos then fit the worker's pool in one round, not two.

    The refunds (two calls a ticket, the longest undo) are sent first so they start first;
    every undo runs at once and the last to finish ends the bundle, so order is only speed.
    """
    refunds = [c.ticket_id for c in commands if isinstance(c, RefundTicket)]
    undo = [signature(c) for c in commands if not isinstance(c, RefundTicket)]
    if refunds:
        undo.insert(0, refund_tickets.si(commands[0].vip_bundle_id, refunds))
    return undo


@app.task(name="vip_bundle.compensation.complete_rollback", ignore_result=True)
def complete_rollback(vip_bundle_id: str) -> None:
    """End an undoing bundle whose undos are all recorded (operators, the reconciler)."""
    finish_rollback(store().require(vip_bundle_id))

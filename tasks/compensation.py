"""Undo steps: refund a show ticket, cancel a leg's flight tickets.

Each is idempotent twice over: the stored state says whether it is still due, and every
partner call carries a key derived from the bundle and the ticket. An undo that still fails
after its retries parks the bundle in `compensation_failed` (the reconciler takes it up again)
and re-raises, so the failure is visible in Flower. The last undo to finish fails the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from adapters.partners import BusinessRefusal, PartnerError
from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import (
    CancelFlightTickets,
    Command,
    Event,
    Leg,
    RefundTicket,
    ResolveBooking,
    Step,
)
from tasks.celery_app import app, compensation_partners, io_pool, store
from tasks.steps import due, finish_rollback, flight_booking, log, record, show_booking

T = TypeVar("T")
REASON = "VIP bundle rolled back"


def _or_park(command: Command, call: Callable[[], T]) -> T:
    try:
        return call()
    except PartnerError as exc:
        step, reason = type(command).__name__, str(exc)
        log.warning("%s for %s failed, parking the bundle: %s", step, command.vip_bundle_id, reason)
        store().apply(command.vip_bundle_id, lambda b: saga.compensation_failed(b, step, reason))
        raise


@app.task(name="vip_bundle.compensation.refund_ticket", ignore_result=True)
def refund_ticket(vip_bundle_id: str, ticket_id: str) -> str:
    """Refund the ticket's payment, void its receipt, then emit `TicketRefunded_v1`."""
    command = RefundTicket(vip_bundle_id=vip_bundle_id, ticket_id=ticket_id)
    if (bundle := due(command)) is None:
        return "skipped"
    p = compensation_partners()

    def undo() -> None:
        # Independent calls, each idempotent by its own key: side by side. If one fails the
        # bundle parks, and the next round sends both again with the same keys.
        refunded = io_pool().submit(
            p.refund,
            payment_reference=ticket_id,
            reason=REASON,
            deduplication_id=bundle.key(f"refund-{ticket_id}"),
            correlation_id=bundle.correlation_id,
        )
        voided = io_pool().submit(
            p.void_receipt,
            ticket_id=ticket_id,
            reason=REASON,
            idempotent_id=bundle.key(f"void-{ticket_id}"),
            correlation_id=bundle.correlation_id,
        )
        for call in (refunded, voided):
            call.result()

    _or_park(command, undo)
    # The last undo also ends the bundle (failed or cancelled), in the same write.
    applied = record(command, lambda b: saga.ticket_refunded(b, ticket_id), bundle, saga.finish)
    finish_rollback(applied.bundle)  # a no-op unless a rival recorded this undo first
    return "refunded"


@app.task(name="vip_bundle.compensation.cancel_flight_tickets", ignore_result=True)
def cancel_flight_tickets(vip_bundle_id: str, leg: str) -> str:
    """Cancel every ticket of one leg (a leg in doubt is resolved first, so its tickets are
    known: see `resolve_booking`)."""
    command = CancelFlightTickets(vip_bundle_id=vip_bundle_id, leg=Leg(leg))
    if (bundle := due(command)) is None:
        return "skipped"
    p = compensation_partners()

    def undo() -> list[str]:
        ticket_ids = bundle.flight_tickets[command.leg]
        cancel = p.cancel_flight_ticket
        calls = [
            io_pool().submit(cancel, t, correlation_id=bundle.correlation_id) for t in ticket_ids
        ]
        for call in calls:
            call.result()
        return ticket_ids

    ticket_ids = _or_park(command, undo)
    applied = record(
        command,
        lambda b: saga.flight_tickets_cancelled(b, command.leg, ticket_ids),
        bundle,
        saga.finish,
    )
    finish_rollback(applied.bundle)  # a no-op unless a rival recorded this undo first
    return "cancelled"


@app.task(name="vip_bundle.compensation.resolve_booking", ignore_result=True)
def resolve_booking(vip_bundle_id: str, step: str) -> str:
    """Learn what a booking step in doubt booked by re-sending its request, same idempotency key.

    The partner answers a key it saw with its first answer and books nothing more, so whatever
    the original call did (or still does), this learns it: tickets are recorded as the step's
    late outcome (and then undone), a 409 as "booked nothing".
    """
    command = ResolveBooking(vip_bundle_id=vip_bundle_id, step=Step(step))
    if (bundle := due(command)) is None:
        return "skipped"
    p = compensation_partners()

    def resend() -> Callable[[Bundle], Event]:
        if command.step is Step.SHOW:
            try:
                ids = p.book_show_tickets(**show_booking(bundle))
            except BusinessRefusal as exc:
                refused = str(exc)
                return lambda b: saga.booking_failed(b, refused)
            return lambda b: saga.booking_made(b, ids)
        leg = saga.LEG_OF_STEP[command.step]
        try:
            ids = p.book_flight(**flight_booking(bundle, leg))
        except BusinessRefusal as exc:
            refused = str(exc)
            return lambda b: saga.flight_booking_failed(b, leg, refused)
        return lambda b: saga.flight_booked(b, leg, ids)

    outcome = _or_park(command, resend)
    applied = record(command, outcome, bundle)  # its tickets are handed over to be undone
    finish_rollback(applied.bundle)
    return "resolved"

"""Undo steps: refund show tickets, cancel a leg's flight tickets, resolve a booking in doubt.

Each is idempotent twice over: the stored state says whether it is still due, and every
partner call carries a key derived from the bundle and the ticket. An undo that still fails
after its retries parks the bundle in `compensation_failed` (the reconciler takes it up again)
and re-raises, so the failure is visible in Flower. The last undo to finish fails the bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import TypeVar

from adapters.partners import BusinessRefusal, PartnerError, PartnerUnavailable
from adapters.settings import get_settings
from adapters.store import Decide
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
from tasks.celery_app import app, compensation_partners, deferred_steps, io_pool, store
from tasks.deferral import deferring
from tasks.steps import due, due_all, finish_rollback, flight_booking, log, record, show_booking

T = TypeVar("T")
REASON = "VIP bundle rolled back"


def _or_park(bundle: Bundle, commands: Sequence[Command], call: Callable[[], T]) -> T:
    """Run an undo's calls: a partner not due defers the undo (a wait, never a failure); a
    failure past the retries parks the bundle. A bundle parked because its partner is down
    also waits on that partner, so it is taken up as soon as the partner's circuit closes,
    not only at the reconciler's next backoff."""
    command = commands[0]
    try:
        with deferring(bundle, *commands, undo=True):
            return call()
    except PartnerError as exc:
        step, reason = type(command).__name__, str(exc)
        log.warning("%s for %s failed, parking the bundle: %s", step, command.vip_bundle_id, reason)
        store().apply(command.vip_bundle_id, lambda b: saga.compensation_failed(b, step, reason))
        if isinstance(exc, PartnerUnavailable) and exc.partner is not None:
            wait_s = get_settings().parked_retry_base_s
            deferred_steps().defer(bundle.vip_bundle_id, exc.partner, undo=True, wait_s=wait_s)
        raise


@app.task(name="vip_bundle.compensation.refund_tickets", ignore_result=True)
def refund_tickets(vip_bundle_id: str, ticket_ids: list[str]) -> str:
    """Refund show tickets of one bundle: for each, refund its payment and void its receipt,
    then emit `TicketRefunded_v1` for each.

    Every call runs side by side (each is idempotent by its own key), and one write records
    them all: the process manager sends a bundle's refunds as one task, so a rollback's undos
    take one round of the worker's pool, not one per ticket.
    """
    if not (
        isinstance(ticket_ids, list) and ticket_ids and all(isinstance(t, str) for t in ticket_ids)
    ):
        log.error("refund_tickets for %s refused: ticket_ids must be a list of ids", vip_bundle_id)
        return "refused"
    commands = [RefundTicket(vip_bundle_id=vip_bundle_id, ticket_id=t) for t in ticket_ids]
    if (started := due_all(commands)) is None:
        return "skipped"
    bundle, todo = started
    p = compensation_partners()

    def undo() -> None:
        # If one call fails the bundle parks, and the next round sends them all again with
        # the same keys (the partners answer a key they saw with its first answer).
        common = {"reason": REASON, "correlation_id": bundle.correlation_id}
        calls: list[Future[None]] = []
        for t in (c.ticket_id for c in todo):
            refund_key, void_key = bundle.key(f"refund-{t}"), bundle.key(f"void-{t}")
            refund = partial(p.refund, payment_reference=t, deduplication_id=refund_key)
            void = partial(p.void_receipt, ticket_id=t, idempotent_id=void_key)
            calls += [io_pool().submit(refund, **common), io_pool().submit(void, **common)]
        for call in calls:
            call.result()

    _or_park(bundle, todo, undo)
    refunded = [_refunded(c) for c in todo]
    # The last undo also ends the bundle (failed or cancelled), in the same write.
    applied = store().apply(
        vip_bundle_id, _first_of(refunded), current=bundle, then=[*refunded, saga.finish]
    )
    if applied.event is None:
        log.info("RefundTicket: bundle %s had them recorded already", vip_bundle_id)
    finish_rollback(applied.bundle)  # a no-op unless a rival recorded these refunds first
    return "refunded"


@app.task(name="vip_bundle.compensation.refund_ticket", ignore_result=True)
def refund_ticket(vip_bundle_id: str, ticket_id: str) -> str:
    """One ticket's refund: `refund_tickets` for one (kept for messages already queued)."""
    return refund_tickets(vip_bundle_id, [ticket_id])


def _refunded(command: RefundTicket) -> Decide:
    """`TicketRefunded_v1` for the command's ticket while its refund is still pending."""

    def decide(bundle: Bundle) -> Event | None:
        if saga.is_pending(bundle, command):
            return saga.ticket_refunded(bundle, command.ticket_id)
        return None

    return decide


def _first_of(decides: list[Decide]) -> Decide:
    """The first event any of `decides` gives (None if none does)."""
    return lambda bundle: next((e for d in decides if (e := d(bundle)) is not None), None)


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

    ticket_ids = _or_park(bundle, [command], undo)
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

    outcome = _or_park(bundle, [command], resend)
    applied = record(command, outcome, bundle)  # its tickets are handed over to be undone
    finish_rollback(applied.bundle)
    return "resolved"

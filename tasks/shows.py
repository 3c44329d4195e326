"""Show ticket booking (the first forward step)."""

from __future__ import annotations

from adapters.partners import BusinessRefusal
from process_manager import saga
from process_manager.messages import BookShowTickets
from tasks.celery_app import app, partners
from tasks.deferral import deferring
from tasks.steps import due_calling, record, show_booking


@app.task(name="vip_bundle.book_show_tickets", ignore_result=True, throws=(BusinessRefusal,))
def book_show_tickets(vip_bundle_id: str) -> None:
    """Book the bundle's show tickets; a sold-out show raises `ShowSoldOut` (never retried)."""
    command = BookShowTickets(vip_bundle_id=vip_bundle_id)
    if (started := due_calling(command)) is None:
        return
    bundle, admission = started
    with deferring(bundle, command):
        ticket_ids = partners().book_show_tickets(**show_booking(bundle), admitted=admission)
    record(command, lambda b: saga.booking_made(b, ticket_ids), bundle)

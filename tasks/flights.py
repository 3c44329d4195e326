"""Flight booking, inbound then return (the same task, one leg each)."""

from __future__ import annotations

from adapters.partners import BusinessRefusal
from process_manager import saga
from process_manager.messages import BookFlight, Leg
from tasks.celery_app import app, partners
from tasks.deferral import deferring
from tasks.steps import due_calling, finalizing, flight_booking, record


@app.task(name="vip_bundle.book_flight", ignore_result=True, throws=(BusinessRefusal,))
def book_flight(vip_bundle_id: str, leg: str) -> None:
    """Book one leg for every passenger; no seats left raises `NoFlightTicketsAvailable`."""
    command = BookFlight(vip_bundle_id=vip_bundle_id, leg=Leg(leg))
    if (started := due_calling(command)) is None:
        return
    bundle, admission = started
    with deferring(bundle, command):
        ticket_ids = partners().book_flight(
            **flight_booking(bundle, command.leg), admitted=admission
        )
    # The return leg's transition also finalizes the bundle, in the same write.
    then = [finalizing] if command.leg is Leg.RETURN else []
    record(command, lambda b: saga.flight_booked(b, command.leg, ticket_ids), bundle, then)

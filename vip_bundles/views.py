"""What the HTTP door shows of a bundle as JSON: the whole bundle (`GET /vip-bundles/{id}`),
and its summary in pages and searches. Pure functions from a `Bundle` to plain data; the
routes in `vip_bundles/http/` render them.

The rest of what the door shows has a module each: the bundle page (`pages.py`), the state
diagram (`diagram.py`) and the operator's console (`console_view.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import CancelFlightTickets, Leg, RefundTicket, ResolveBooking


def when_text(at: datetime) -> str:
    """A time as the door shows it: ISO 8601, milliseconds, `Z`."""
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- JSON views ----------------------------------------------------------------------------------


def pending(bundle: Bundle) -> list[dict[str, str]]:
    out = []
    for command in saga.pending_compensations(bundle):
        match command:
            case RefundTicket(ticket_id=ticket_id):
                out.append({"step": "refund_ticket", "ticket_id": ticket_id})
            case CancelFlightTickets(leg=leg):
                out.append({"step": "cancel_flight_tickets", "leg": leg.value})
            case ResolveBooking(step=step):
                out.append({"step": "resolve_booking", "booking_step": step.value})
    return out


def compensations(bundle: Bundle) -> dict[str, Any]:
    """The undo work done so far, and what is still to do (in a rollback or a cancellation)."""
    return {
        "refunded_ticket_ids": bundle.refunded_ticket_ids,
        "cancelled_legs": [leg.value for leg in bundle.cancelled_legs],
        "cancelled_flight_ticket_ids": bundle.cancelled_flight_ticket_ids(),
        "pending": pending(bundle),
    }


def bundle_view(bundle: Bundle) -> dict[str, Any]:
    data = bundle.model_dump(mode="json")
    return {
        "status": data["status"],
        "vip_bundle_id": data["vip_bundle_id"],
        "booking_id": data["booking_id"],
        "correlation_id": data["correlation_id"],
        "tenant": data["tenant"],  # the owner (an API key's @tenant), or null
        "customer_email": data["customer_email"],
        "number_of_tickets": data["number_of_tickets"],
        "show_id": data["show_id"],
        "passengers": data["passengers"],
        "inbound_flight_id": data["inbound_flight_id"],
        "return_flight_id": data["return_flight_id"],
        "ticket_ids": data["ticket_ids"],
        "flight_tickets": {leg.value: bundle.flight_tickets.get(leg, []) for leg in Leg},
        "compensations": compensations(bundle),
        "failure": data["failure"],
        "cancellation": data["cancellation"],
        "last_error": data["last_error"],
        "step_failures": data["step_failures"],
        "compensation_failures": data["compensation_failures"],
        # The releases that created it and last moved it (null: one before 0.2.0).
        "created_by_release": data["created_by_release"],
        "moved_by_release": data["moved_by_release"],
        # What the audit found at the partners after the bundle settled, oldest first.
        "drift": [
            {k: d[k] for k in ("key", "kind", "description", "record", "at")} for d in data["drift"]
        ],
        "history": [
            {
                "at": h["at"],
                "event": h["event"],
                "from": h["from_status"],
                "to": h["to_status"],
                "detail": h["detail"],
                # retry rounds like this one counted here, not listed (the last one's time)
                "repeats": h["repeats"],
                "last_at": h["last_at"],
            }
            for h in data["history"]
        ],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
        # When it was moved to the archive (None: live in Redis).
        "archived_at": bundle.archived_at.isoformat() if bundle.archived_at else None,
    }


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    data = bundle.model_dump(mode="json")
    keys = (
        "vip_bundle_id",
        "booking_id",
        "status",
        "customer_email",
        "show_id",
        "failure",
        "cancellation",
    )
    return {
        **{k: data[k] for k in keys},
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
        "archived_at": bundle.archived_at.isoformat() if bundle.archived_at else None,
    }

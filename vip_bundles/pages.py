"""The bundle's page (`GET /vip-bundles/{id}` in a browser): its timeline, a headline, the
undo work, its path on the state diagram; and the templates that render every page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from adapters import telemetry
from adapters.settings import get_settings
from process_manager import versions
from process_manager.bundle import UNDOING, Bundle, HistoryEntry, Status
from process_manager.messages import Leg
from vip_bundles.diagram import diagram
from vip_bundles.views import bundle_view, pending, when_text

S = Status


_templates = Environment(
    loader=PackageLoader("vip_bundles", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


# What ran, for each event in the history (the event names what happened; this, the step).
STEP_OF_EVENT = {
    "VipBundleInitialized_v1": "request stored, saga started",
    "BookingMade_v1": "book show tickets",
    "BookingFailed_v1": "book show tickets: refused",
    "FlightBooked_v1": "book flight",
    "FlightBookingFailed_v1": "book flight: failed",
    "StepFailed": "step failed, to be tried again",
    "TicketRefunded_v1": "undo: refund ticket + void receipt",
    "FlightTicketsCancelled_v1": "undo: cancel flight tickets",
    "CompensationFailed_v1": "undo failed past its retries",
    "RollbackResumed": "rollback resumed",
    "VipBundleFinalized_v1": "finalize",
    "VipBundleFailed_v1": "rollback complete",
    "VipBundleCancellationRequested_v1": "cancel requested",
    "CancellationResumed": "cancellation resumed",
    "VipBundleCancelled_v1": "cancellation complete",
}
# Outcomes of a booking step recorded while undoing: it was at the partner when the cancel
# came (or was given up without an answer) and reported late, or was resolved by re-sending.
LATE_STEP = {
    "BookingMade_v1": "book show tickets: late outcome, to be undone",
    "BookingFailed_v1": "book show tickets: booked nothing",
    "FlightBooked_v1": "book flight: late outcome, to be undone",
    "FlightBookingFailed_v1": "book flight: booked nothing",
    "LedgerDriftDetected_v1": "audit: partner records disagree",
}
FAILURE_EVENTS = {
    "BookingFailed_v1",
    "FlightBookingFailed_v1",
    "StepFailed",
    "CompensationFailed_v1",
    "LedgerDriftDetected_v1",
}
UNDO_EVENTS = {
    "TicketRefunded_v1",
    "FlightTicketsCancelled_v1",
    "VipBundleFailed_v1",
    "VipBundleCancelled_v1",
}
CANCEL_EVENTS = {"VipBundleCancellationRequested_v1", "CancellationResumed"}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}"


def _kind(h: HistoryEntry) -> str:
    """How a timeline row is styled: a late outcome, a cancel, a failure, an undo, or plain."""
    if h.from_status in UNDOING and h.event in LATE_STEP:
        return "late"
    for kind, events in (
        ("cancel", CANCEL_EVENTS),
        ("failure", FAILURE_EVENTS),
        ("undo", UNDO_EVENTS),
    ):
        if h.event in events:
            return kind
    return ""


def _detail(h: HistoryEntry) -> str:
    if not h.repeats:
        return h.detail or ""
    last = when_text(h.last_at) if h.last_at else "?"
    return f"{h.detail or ''} (and {h.repeats} more rounds like it, the last at {last})".strip()


def timeline(bundle: Bundle) -> list[dict[str, Any]]:
    rows = []
    start = bundle.history[0].at if bundle.history else None
    previous = start
    for n, h in enumerate(bundle.history, 1):
        kind = _kind(h)
        step = LATE_STEP[h.event] if kind == "late" else STEP_OF_EVENT.get(h.event, h.event)
        rows.append(
            {
                "n": n,
                "at": when_text(h.at),
                "clock": _clock(h.at),
                "since_start_ms": _ms((h.at - start).total_seconds()) if start else "",
                "since_previous_ms": _ms((h.at - previous).total_seconds()) if previous else "",
                "step": step,
                "event": h.event,
                "from": h.from_status.value if h.from_status else "",
                "to": h.to_status.value,
                "detail": _detail(h),
                "kind": kind,
            }
        )
        previous = h.at
    return rows


def headline(bundle: Bundle) -> dict[str, str]:
    """One sentence saying where the bundle stands and, if it failed, why."""
    failure, c = bundle.failure, bundle.cancellation
    why = f"{failure.step}: {failure.reason}" if failure else ""
    by = f" by {c.requested_by}" if c and c.requested_by else ""
    asked = f"Asked{by} while {c.from_status.value}: {c.reason}" if c else ""
    match bundle.status:
        case S.FINALIZED:
            return {"kind": "ok", "text": "Finalized: show tickets and both flights booked."}
        case S.FAILED:
            return {"kind": "failed", "text": f"Failed and rolled back. Why: {why}"}
        case S.COMPENSATION_FAILED:
            return {
                "kind": "parked",
                "text": f"Parked: an undo failed ({bundle.last_error or 'see timeline'}). "
                f"It is retried later. "
                + (f"Cancellation. {asked}" if c else f"Original failure: {why}"),
            }
        case S.ROLLING_BACK:
            return {"kind": "failed", "text": f"Rolling back. Why: {why}"}
        case S.CANCELLING:
            return {"kind": "failed", "text": f"Cancelling: undoing what it booked. {asked}"}
        case S.CANCELLED:
            return {"kind": "failed", "text": f"Cancelled: everything undone. {asked}"}
    note = f" Last error: {bundle.last_error}" if bundle.last_error else ""
    return {"kind": "flight", "text": f"In flight ({bundle.status.value}).{note}"}


def page_context(bundle: Bundle) -> dict[str, Any]:
    return {
        "bundle": bundle_view(bundle),
        "failure": bundle.failure,
        "headline": headline(bundle),
        "timeline": timeline(bundle),
        "diagram": diagram(bundle),
        "refunds": [
            {"ticket_id": t, "done": t in bundle.refunded_ticket_ids} for t in bundle.ticket_ids
        ],
        "cancellations": [
            {
                "leg": leg.value,
                "ticket_ids": bundle.flight_tickets.get(leg, []),
                "done": leg in bundle.cancelled_legs,
            }
            for leg in Leg
            if bundle.flight_tickets.get(leg) or leg in bundle.cancelled_legs
        ],
        "pending": pending(bundle),
        "in_rollback": bool(bundle.failure or bundle.cancellation)
        or bundle.status in (S.ROLLING_BACK, S.FAILED),
        "cancellation": bundle.cancellation,
        "releases": {
            "created": versions.release_label(bundle.created_by_release),
            "moved": versions.release_label(bundle.moved_by_release),
        },
        "trace": trace_link(bundle),
    }


def trace_link(bundle: Bundle) -> dict[str, str | None] | None:
    """The bundle's trace id, and its URL when TRACE_URL_TEMPLATE is set (None: not traced)."""
    if (trace_id := telemetry.trace_id_of(bundle.traceparent)) is None:
        return None
    return {"id": trace_id, "url": telemetry.trace_url(get_settings().trace_url_template, trace_id)}

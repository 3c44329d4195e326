"""The operator's console (`GET /`, `GET /dashboard.json`): the fleet on the state diagram,
counts, the parked and recent failed/cancelled bundles. Pure functions to plain data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from process_manager.bundle import IN_FLIGHT, Bundle, Status
from vip_bundles.diagram import all_edges, fleet_diagram, move_key
from vip_bundles.views import when_text

MOVES_WINDOW_MIN = 15


def console_row(bundle: Bundle) -> dict[str, Any]:
    """One bundle in a console list: where it is, since when, and why (a cancellation's reason,
    else the failure), and what went wrong last."""
    failure, cancellation = bundle.failure, bundle.cancellation
    if cancellation is not None:
        why = f"cancelled: {cancellation.reason}"
    else:
        why = f"{failure.step}: {failure.reason}" if failure else ""
    return {
        "vip_bundle_id": bundle.vip_bundle_id,
        "status": bundle.status.value,
        "customer_email": bundle.customer_email,
        "updated_at": when_text(bundle.updated_at),
        "last_error": bundle.last_error or "",
        "failure": why,
        "compensation_failures": bundle.compensation_failures,
    }


def console_data(
    counts: dict[Status, int],
    moves: dict[str, int],
    parked: list[Bundle],
    failed: list[Bundle],
    cancelled: list[Bundle],
    now: datetime,
) -> dict[str, Any]:
    """What the console shows and refreshes (`GET /dashboard.json`): plain JSON."""
    return {
        "at": when_text(now),
        "total": sum(counts.values()),
        "counts": {s.value: counts.get(s, 0) for s in Status},
        "in_flight": sum(counts.get(s, 0) for s in IN_FLIGHT),
        "window_minutes": MOVES_WINDOW_MIN,
        "moves": {
            move_key(e.source, e.target): moves.get(move_key(e.source, e.target), 0)
            for e in all_edges()
        },
        "parked": [console_row(b) for b in parked],
        "failed": [console_row(b) for b in failed],
        "cancelled": [console_row(b) for b in cancelled],
    }


def console_context(
    data: dict[str, Any], q: str | None, found: list[Bundle] | None, links: dict[str, str]
) -> dict[str, Any]:
    counts = {Status(s): n for s, n in data["counts"].items()}
    return {
        "data": data,
        "diagram": fleet_diagram(counts, data["moves"]),
        "q": q or "",
        "found": [console_row(b) for b in found] if found is not None else None,
        "links": links,
        "in_flight_statuses": [s.value for s in Status if s in IN_FLIGHT],
    }

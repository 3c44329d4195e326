"""What the HTTP door shows: the bundle as JSON, its timeline, the state diagram, the page context.

Pure functions from a `Bundle` (and the saga's TRANSITIONS) to plain data; the routes in
`vip_bundles/api.py` and the templates render them. No Redis, no Celery here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from process_manager import saga
from process_manager.bundle import IN_FLIGHT, UNDOING, Bundle, HistoryEntry, Status
from process_manager.messages import CancelFlightTickets, Leg, RefundTicket, ResolveBooking

# --- JSON views ----------------------------------------------------------------------------------


def _pending(bundle: Bundle) -> list[dict[str, str]]:
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
        "pending": _pending(bundle),
    }


def bundle_view(bundle: Bundle) -> dict[str, Any]:
    data = bundle.model_dump(mode="json")
    return {
        "status": data["status"],
        "vip_bundle_id": data["vip_bundle_id"],
        "booking_id": data["booking_id"],
        "correlation_id": data["correlation_id"],
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


# --- the timeline page ---------------------------------------------------------------------------

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


def _when(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    last = _when(h.last_at) if h.last_at else "?"
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
                "at": _when(h.at),
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


# --- the state diagram: every status a node, every (from, to) of TRANSITIONS an edge -----------

S = Status
NODE_W, NODE_H = 150, 44
# Forward path along the top. Below it the rollback on the left (ending `failed`) and the
# cancellation on the right (ending `cancelled`), the parked status between the two. The top
# row leaves room above for its loops' labels (and, on the console, their counts).
LAYOUT: dict[Status, tuple[int, int]] = {
    S.INITIALIZED: (95, 100),
    S.BOOKING_MADE: (345, 100),
    S.INBOUND_BOOKED: (595, 100),
    S.RETURN_BOOKED: (845, 100),
    S.FINALIZED: (1095, 100),
    S.ROLLING_BACK: (345, 310),
    S.FAILED: (95, 480),
    S.COMPENSATION_FAILED: (595, 480),
    S.CANCELLING: (845, 310),
    S.CANCELLED: (1095, 480),
}
DIAGRAM_W, DIAGRAM_H = 1190, 540
LINE_H = 12.6  # one line of an edge label (1.2em of 10.5px)
# Self-loops sit above the top row and beside the undoing states, clear of other edges.
LOOP_SIDE = {S.ROLLING_BACK: "left", S.COMPENSATION_FAILED: "left", S.CANCELLING: "right"}
# Where along an edge its label sits (default: half way): the diagonals into rolling_back have
# theirs higher, clear of the vertical one's.
LABEL_AT = {(S.INITIALIZED, S.ROLLING_BACK): 0.3, (S.INBOUND_BOOKED, S.ROLLING_BACK): 0.3}
# A self-loop carrying every late booking outcome gets one label for them.
LATE_OUTCOMES = ["BookingMade", "BookingFailed", "FlightBooked", "FlightBookingFailed"]
STATUS_KIND = {
    S.FINALIZED: "ok",
    S.FAILED: "failed",
    S.CANCELLED: "failed",
    S.COMPENSATION_FAILED: "parked",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    label_x: float
    label_y: float
    anchor: str
    labels: list[str]  # drawn
    events: list[str]  # every event of the edge (its tooltip)
    taken: bool = False
    moves: int | None = None  # the fleet view: transitions along it lately


def _short(event: type) -> str:
    return event.__name__.removesuffix("_v1").removeprefix("VipBundle")


def _border(cx: float, cy: float, dx: float, dy: float) -> tuple[float, float]:
    """Where the ray from a node's centre along (dx, dy) leaves its box."""
    t = min(
        (NODE_W / 2) / abs(dx) if dx else float("inf"),
        (NODE_H / 2) / abs(dy) if dy else float("inf"),
    )
    return cx + t * dx, cy + t * dy


def _line(
    source: Status, target: Status, offset: float, at: float = 0.5
) -> tuple[str, float, float]:
    (x1, y1), (x2, y2) = LAYOUT[source], LAYOUT[target]
    dx, dy = x2 - x1, y2 - y1
    length = (dx * dx + dy * dy) ** 0.5
    # Two edges between one pair of nodes run side by side, not on top of each other.
    ox, oy = -dy / length * offset, dx / length * offset
    ax, ay = _border(x1, y1, dx, dy)
    bx, by = _border(x2, y2, -dx, -dy)
    path = f"M{ax + ox:.1f},{ay + oy:.1f} L{bx + ox:.1f},{by + oy:.1f}"
    return path, ax + (bx - ax) * at + ox, ay + (by - ay) * at + oy


def _loop(status: Status, lines: int) -> tuple[str, float, float, str]:
    """A self-loop and where its label starts; a label above the node grows upwards."""
    x, y = LAYOUT[status]
    if LOOP_SIDE.get(status) == "left":
        e = x - NODE_W / 2
        path = f"M{e},{y - 10} C{e - 60},{y - 45} {e - 60},{y + 45} {e},{y + 10}"
        return path, e - 50, y, "end"
    if LOOP_SIDE.get(status) == "right":
        e = x + NODE_W / 2
        path = f"M{e},{y - 10} C{e + 60},{y - 45} {e + 60},{y + 45} {e},{y + 10}"
        return path, e + 50, y, "start"
    t = y - NODE_H / 2
    path = f"M{x - 22},{t} C{x - 50},{t - 45} {x + 50},{t - 45} {x + 22},{t}"
    return path, x, t - 38 - LINE_H * (lines - 1), "middle"


def _length(source: Status, target: Status) -> float:
    (x1, y1), (x2, y2) = LAYOUT[source], LAYOUT[target]
    return ((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5


def _labels(
    source: Status,
    target: Status,
    labels: list[str],
    pairs: dict[tuple[Status, Status], list[str]],
) -> list[str]:
    """The labels drawn on one edge. Edges into one status by the same events (a cancel from
    every status) are labelled once, on the shortest of them; the rest show it on hover."""
    if source == target and all(e in labels for e in LATE_OUTCOMES):
        return [*(e for e in labels if e not in LATE_OUTCOMES), "late booking outcomes"]
    same = [s for (s, t), other in pairs.items() if t == target and s != t and other == labels]
    if len(same) > 2 and source != min(same, key=lambda s: _length(s, target)):
        return []
    return labels


@cache
def _edges() -> tuple[Edge, ...]:
    """Every (from, to) of TRANSITIONS as a drawn edge, with its events as labels."""
    pairs: dict[tuple[Status, Status], list[str]] = {}
    for (source, event), target in saga.TRANSITIONS.items():
        pairs.setdefault((source, target), []).append(_short(event))
    edges = []
    for (source, target), events in pairs.items():
        labels = _labels(source, target, events, pairs)
        if source == target:
            d, lx, ly, anchor = _loop(source, len(labels))
        else:
            both_ways = (target, source) in pairs
            at = LABEL_AT.get((source, target), 0.5)
            d, lx, ly = _line(source, target, 10 if both_ways else 0, at)
            anchor = "middle"
            if LAYOUT[source][0] == LAYOUT[target][0]:  # vertical: label beside the line
                down = LAYOUT[target][1] > LAYOUT[source][1]
                anchor, lx = ("start", lx + 8) if down != both_ways else ("end", lx - 8)
            else:
                ly -= 6
        edges.append(Edge(source, target, d, lx, ly, anchor, labels, events))
    return tuple(edges)


def _picture(edges: list[Edge], nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodes": nodes,
        "edges": edges,
        "w": DIAGRAM_W,
        "h": DIAGRAM_H,
        "nw": NODE_W,
        "nh": NODE_H,
    }


def _node(status: Status, **extra: Any) -> dict[str, Any]:
    x, y = LAYOUT[status]
    kind = STATUS_KIND.get(status, "flight")
    return {"status": status.value, "x": x, "y": y, "kind": kind, "classes": "", **extra}


def diagram(bundle: Bundle) -> dict[str, Any]:
    """The state diagram with this bundle's path through it: visited states, taken edges."""
    taken = {(h.from_status, h.to_status) for h in bundle.history if h.from_status is not None}
    visited = {h.to_status for h in bundle.history} | {bundle.status}
    edges = [replace(e, taken=(e.source, e.target) in taken) for e in _edges()]
    nodes = [
        _node(
            s,
            classes=" ".join(
                c for c, on in (("visited", s in visited), ("current", s is bundle.status)) if on
            ),
        )
        for s in LAYOUT
    ]
    return _picture(edges, nodes)


def move_key(source: str, target: str) -> str:
    """How the store counts a transition per minute ('from>to')."""
    return f"{source}>{target}"


def fleet_diagram(counts: dict[Status, int], moves: dict[str, int]) -> dict[str, Any]:
    """The same diagram for all bundles: how many are in each state, and how many moved along
    each edge lately (edges with moves are drawn as taken)."""
    edges = []
    for e in _edges():
        n = moves.get(move_key(e.source, e.target), 0)
        # The count is one more line on top of the label: a label above a loop moves up.
        above = e.source == e.target and e.anchor == "middle"
        label_y = e.label_y - LINE_H if above else e.label_y
        edges.append(replace(e, taken=n > 0, moves=n, label_y=label_y))
    nodes = [
        _node(s, count=counts.get(s, 0), classes="visited" if counts.get(s, 0) else "")
        for s in LAYOUT
    ]
    return _picture(edges, nodes)


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
        "pending": _pending(bundle),
        "in_rollback": bool(bundle.failure or bundle.cancellation)
        or bundle.status in (S.ROLLING_BACK, S.FAILED),
        "cancellation": bundle.cancellation,
    }


# --- the operator's console (GET /) ---------------------------------------------------------------

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
        "updated_at": _when(bundle.updated_at),
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
        "at": _when(now),
        "total": sum(counts.values()),
        "counts": {s.value: counts.get(s, 0) for s in Status},
        "in_flight": sum(counts.get(s, 0) for s in IN_FLIGHT),
        "window_minutes": MOVES_WINDOW_MIN,
        "moves": {
            move_key(e.source, e.target): moves.get(move_key(e.source, e.target), 0)
            for e in _edges()
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

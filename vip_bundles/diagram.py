"""The saga's state diagram: every status a node, every (from, to) of TRANSITIONS an edge;
one bundle's path through it (its page), or the whole fleet with counts (the console).
Pure geometry from the saga's table; the templates draw it as SVG.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from process_manager import saga
from process_manager.bundle import Bundle, Status

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
def all_edges() -> tuple[Edge, ...]:
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
    edges = [replace(e, taken=(e.source, e.target) in taken) for e in all_edges()]
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
    for e in all_edges():
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

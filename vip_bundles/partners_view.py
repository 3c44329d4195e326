"""What the console and `vip-bundles stats` say about each partner's back-pressure: its circuit,
the Retry-After left, the steps waiting on it, its 429s and the waits they caused (the same
figures as `/metrics`, adapters/metrics_partners.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.metrics import read_partners
from adapters.metrics_partners import PartnerSnapshot
from adapters.store import BundleStore

if TYPE_CHECKING:
    from rich.table import Table

# The columns of the console's "Partners" table and of `vip-bundles stats`' partner table.
COLUMNS = (
    ("partner", "partner"),
    ("circuit_text", "circuit"),
    ("retry_after_text", "Retry-After left"),
    ("deferred_undo", "undos waiting"),
    ("deferred_forward", "bookings waiting"),
    ("throttled", "answered 429"),
    ("not_called", "calls held back"),
    ("waits_text", "waits"),
)


def seconds(s: float) -> str:
    if s <= 0:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(int(s), 60)  # truncated: never "9 min 60 s"
    return f"{minutes} min {rest:02d} s"


def partner_row(p: PartnerSnapshot) -> dict[str, Any]:
    """One partner as plain JSON: the numbers, and the text the console and stats print."""
    circuit = p.circuit.replace("_", "-")
    if p.circuit != "closed" and p.open_s:
        circuit += f" for {seconds(p.open_s)}"
    waits = int(sum(p.waits.values()))
    return {
        **p.as_dict(),
        "deferred_undo": p.deferred.get("undo", 0),
        "deferred_forward": p.deferred.get("forward", 0),
        # Anything but a closed circuit, a Retry-After being honoured, or steps waiting is
        # what an operator looks at first: the row is highlighted.
        "busy": p.circuit != "closed" or p.retry_after_s > 0 or sum(p.deferred.values()) > 0,
        "circuit_text": circuit,
        "retry_after_text": seconds(p.retry_after_s),
        "waits_text": f"{waits:,}" + (f" ({seconds(p.wait_s)} in all)" if p.wait_s else ""),
    }


def partners_view(store: BundleStore) -> list[dict[str, Any]]:
    """Every partner, in the contract's order (shows, flights, payments, receipts)."""
    return [partner_row(p) for p in read_partners(store)]


def partners_table(store: BundleStore) -> Table:
    """`vip-bundles stats`: the console's "Partners" table in the terminal."""
    from rich.table import Table  # only the CLI renders it

    table = Table(title="partners")
    for n, (_, title) in enumerate(COLUMNS):
        table.add_column(title, justify="left" if n < 2 else "right")
    for row in partners_view(store):
        cells = [f"{v:,}" if isinstance(v := row[key], int) else str(v) for key, _ in COLUMNS]
        table.add_row(*cells, style="bold yellow" if row["busy"] else None)
    return table

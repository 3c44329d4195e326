"""The reliability invariants, checked over what the partners saw and what Redis holds.

`check()` reads everything once (the stored bundles and their status indexes, the events
stream, the simulator's call log, flight tickets, refunds, receipts and seat counts) and returns
`Report`: the counts docs/reliability.md lists, plus one line per violation saying which bundle
broke which rule. A scenario asserts `report.violations == []` and the counts it expects.

The rules (issue 4):
- every submitted bundle is stored, in exactly one status index, and settled: `finalized`,
  `failed`, `cancelled`, or parked in `compensation_failed` (counted, and listed by its index);
  none in flight;
- a finalized bundle holds its show tickets and both legs, nothing refunded, voided or cancelled;
- a failed or cancelled bundle has each ticket refunded once and its receipt voided, every flight
  ticket it booked cancelled, nothing left booked; a cancelled bundle's last event is
  `VipBundleCancelled_v1`;
- no partner effect happens twice for one idempotency key, and no key is reused for another
  request; seats never go below zero (and, where the capacity is known, seats left match the
  tickets held);
- every event in a bundle's history is on the stream exactly once, in the same order.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from adapters.archive import BundleArchive
from adapters.store import BundleStore
from partner_simulator.server import SimulatorClient
from process_manager.bundle import FINAL, IN_FLIGHT, Bundle, Status
from process_manager.messages import EVENT_TYPES, Leg

MUTATING = ("POST", "PUT", "DELETE")
UNDONE = (Status.FAILED, Status.CANCELLED)  # nothing may be left booked or charged
FLIGHTS = "/transportation-api/flight-tickets"


@dataclass
class Counts:
    bundles: int = 0  # stored under the scenario's prefix
    finalized: int = 0
    failed: int = 0
    cancelled: int = 0
    parked: int = 0  # compensation_failed: allowed only where the scenario says so
    stuck: int = 0  # still in flight when checked
    lost: int = 0  # submitted but not stored, or not in exactly its own status index
    duplicated_effects: int = 0  # effects seen twice for one idempotency key, or keys reused
    leaked_flights: int = 0  # active flight tickets no finalized bundle holds
    leaked_show_tickets: int = 0  # show tickets neither held by a finalized bundle nor refunded
    double_refunds: int = 0  # payment references refunded more than once
    seats_below_zero: int = 0
    events_lost: int = 0  # history events missing from the stream (or on it twice)
    audit_findings: int = 0  # what `vip-bundles audit` finds against the partners' books


@dataclass
class Report:
    counts: Counts = field(default_factory=Counts)
    violations: list[str] = field(default_factory=list)

    def add(self, counter: str | None, message: str, n: int = 1) -> None:
        if counter is not None:
            setattr(self.counts, counter, getattr(self.counts, counter) + n)
        self.violations.append(message)

    def as_dict(self) -> dict[str, int]:
        return asdict(self.counts)

    def __str__(self) -> str:
        head = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        shown = "\n  ".join(self.violations[:30])
        more = f"\n  ... {len(self.violations) - 30} more" if len(self.violations) > 30 else ""
        return f"{head}\n  {shown}{more}" if self.violations else head


@dataclass
class PartnerState:
    """Everything the simulator saw, read once through its side-effect-free /_sim views."""

    calls: list[dict[str, Any]]
    flight_tickets: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    receipts: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, sim: SimulatorClient) -> PartnerState:
        return cls(
            calls=sim.calls(),
            flight_tickets=sim.flight_tickets(),
            refunds=sim.refunds(),
            receipts={r["ticket_id"]: r for r in sim.receipts()},
        )

    def effective(self, method: str, path_prefix: str) -> list[dict[str, Any]]:
        """Calls the partner answered itself (not an injected fault, not a 5xx)."""
        return [
            c
            for c in self.calls
            if c["method"] == method
            and c["path"].startswith(path_prefix)
            and not c.get("fault")
            and c["status"] < 500
        ]


def check(
    store: BundleStore,
    sim: SimulatorClient,
    submitted: Iterable[str],
    capacity: dict[str, int] | None = None,
    allow_parked: bool = False,
    archive: BundleArchive | None = None,
) -> Report:
    """Check every invariant; `capacity` is the initial seat count of flights a test limited.
    With `archive`, a bundle moved there counts as stored (and must be in no Redis index)."""
    report = Report()
    bundles = _stored_bundles(store, set(submitted), report, archive)
    partners = PartnerState.read(sim)
    _check_statuses(bundles, report, allow_parked)
    _check_events(store, bundles, report)
    _check_keys(partners, report)
    _check_flights(bundles, partners, report)
    _check_show_tickets(bundles, partners, report)
    _check_seats(bundles, sim, partners, capacity or {}, report)
    return report


# --- the stored bundles --------------------------------------------------------------------------


def _stored_bundles(
    store: BundleStore, submitted: set[str], report: Report, archive: BundleArchive | None = None
) -> dict[str, Bundle]:
    indexed: dict[str, list[Status]] = defaultdict(list)
    for status in Status:
        for bundle in store.list(status, 0, 10**7):
            indexed[bundle.vip_bundle_id].append(status)
    # A bundle written outside the Lua script would be in no index: look at the keys too.
    keys = store.redis.scan_iter(match=f"{store.prefix}bundle:*", count=1000)
    on_disk = {k.decode().removeprefix(f"{store.prefix}bundle:") for k in keys}
    bundles = {}
    for bundle_id in sorted(submitted | on_disk | set(indexed)):
        bundle = store.get(bundle_id)
        if bundle is None and archive is not None:
            bundle = archive.get(bundle_id)
            if bundle is not None:  # archived: left Redis with every index entry
                bundles[bundle_id] = bundle
                if bundle_id in indexed:
                    report.add("lost", f"{bundle_id}: archived but in {indexed[bundle_id]}")
                continue
        if bundle is None:
            report.add("lost", f"{bundle_id}: submitted but not stored")
            continue
        bundles[bundle_id] = bundle
        if indexed.get(bundle_id) != [bundle.status]:
            report.add(
                "lost",
                f"{bundle_id}: {bundle.status} but in status indexes {indexed.get(bundle_id)}",
            )
    report.counts.bundles = len(bundles)
    return bundles


def _check_statuses(bundles: dict[str, Bundle], report: Report, allow_parked: bool) -> None:
    for bundle in bundles.values():
        if bundle.status is Status.FINALIZED:
            report.counts.finalized += 1
        elif bundle.status is Status.FAILED:
            report.counts.failed += 1
        elif bundle.status is Status.CANCELLED:
            report.counts.cancelled += 1
            if bundle.history[-1].event != "VipBundleCancelled_v1":
                report.violations.append(
                    f"{bundle.vip_bundle_id}: cancelled, last event {bundle.history[-1].event}"
                )
        elif bundle.status is Status.COMPENSATION_FAILED:
            report.counts.parked += 1
            if not allow_parked:
                report.violations.append(f"{bundle.vip_bundle_id}: parked in compensation_failed")
        elif bundle.status in IN_FLIGHT:
            report.add("stuck", f"{bundle.vip_bundle_id}: stuck in {bundle.status}")


def _check_events(store: BundleStore, bundles: dict[str, Bundle], report: Report) -> None:
    """The stream holds each bundle's published history events, once each, in history order."""
    on_stream: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for _, entry in store.redis.xrange(store.stream):
        message = json.loads(entry[b"data"])
        header = message["header"]
        on_stream[entry[b"vip_bundle_id"].decode()].append(
            (header["event_name"], header["event_id"])
        )
    for bundle_id, bundle in bundles.items():
        expected: list[tuple[str, str | None]] = []
        for h in bundle.history:
            if EVENT_TYPES[h.event].published and h.event_id:
                expected.append((h.event, h.event_id))
                # A parked bundle's rounds without progress are folded into one entry that
                # counts them (`repeats`, transition._history); each round was published, with
                # an id of its own that the history no longer holds: right after the first.
                expected += [(h.event, None)] * h.repeats
        seen = on_stream.pop(bundle_id, [])
        if len(seen) == len(expected) and all(
            name == want and (wanted_id is None or event_id == wanted_id)
            for (name, event_id), (want, wanted_id) in zip(seen, expected, strict=True)
        ):
            continue
        ids = [event_id for _, event_id in seen]
        missing = len({i for _, i in expected if i is not None} - set(ids))
        doubled = len(ids) - len(set(ids))
        report.add(
            "events_lost",
            f"{bundle_id}: {len(seen)} events on the stream for {len(expected)} in its history "
            f"({missing} missing, {doubled} twice, or out of order)",
            max(missing + doubled, 1),
        )
    for bundle_id, seen in on_stream.items():
        report.violations.append(f"{bundle_id}: {len(seen)} events on the stream, no bundle")


# --- partner effects -----------------------------------------------------------------------------


def _check_keys(partners: PartnerState, report: Report) -> None:
    """One request per idempotency key, and each key's effect at most once."""
    bodies: dict[tuple[str, str], set[str]] = defaultdict(set)
    for method in ("POST", "PUT"):
        for call in partners.effective(method, "/"):
            key = call["headers"].get("idempotency-key", "")
            bodies[(call["path"], key)].add(json.dumps(call["body"], sort_keys=True))
    for (path, key), variants in bodies.items():
        if not key or len(variants) > 1:
            report.add("duplicated_effects", f"{path} key {key!r}: {len(variants)} requests")
    for dedup, n in Counter(r["deduplication_id"] for r in partners.refunds).items():
        if n > 1:
            report.add("duplicated_effects", f"refund key {dedup}: {n} refunds", n - 1)
    for reference, n in Counter(r["payment_reference"] for r in partners.refunds).items():
        if n > 1:
            report.add("double_refunds", f"ticket {reference}: refunded {n} times")
    voids: dict[str, set[str]] = defaultdict(set)
    for call in partners.effective("PUT", "/receipts-api/void-receipt"):
        voids[call["body"]["ticket_id"]].add(call["body"]["idempotent_id"])
    for ticket_id, keys in voids.items():
        if len(keys) > 1:
            report.add("duplicated_effects", f"receipt {ticket_id}: voided under {len(keys)} keys")
    cancels = Counter(
        c["path"] for c in partners.effective("DELETE", FLIGHTS) if c["status"] in (200, 204)
    )
    for path, n in cancels.items():
        if n > 1:
            report.add("duplicated_effects", f"{path}: cancelled {n} times", n - 1)


def _check_flights(bundles: dict[str, Bundle], partners: PartnerState, report: Report) -> None:
    by_booking: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ticket in partners.flight_tickets:
        by_booking[(ticket["reference_id"], ticket["flight_id"])].append(ticket)
    for (reference, flight_id), tickets in by_booking.items():
        active = [t["ticket_id"] for t in tickets if not t["cancelled"]]
        bundle = bundles.get(reference)
        if bundle is None:
            report.add("leaked_flights", f"flight {flight_id}: tickets for unknown {reference}")
            continue
        if len(tickets) > len(bundle.passengers):
            report.add(
                "duplicated_effects",
                f"{reference}: {len(tickets)} tickets on flight {flight_id} for "
                f"{len(bundle.passengers)} passengers",
            )
        leg = Leg.INBOUND if flight_id == bundle.inbound_flight_id else Leg.RETURN
        held = set(bundle.flight_tickets.get(leg, []))
        if bundle.status is Status.FINALIZED:
            leaked = set(active) - held
            if held != set(active) or len(held) != len(bundle.passengers):
                report.violations.append(
                    f"{reference}: finalized but {leg} holds {len(held)} tickets, "
                    f"{len(active)} active at the airline"
                )
        else:
            leaked = set(active) if bundle.status in UNDONE else set()
        if leaked:
            report.add(
                "leaked_flights", f"{reference} ({bundle.status}): {len(leaked)} {leg} tickets left"
            )
    for bundle in bundles.values():
        if bundle.status is Status.FINALIZED:
            for leg in Leg:
                if not bundle.flight_tickets.get(leg):
                    report.violations.append(f"{bundle.vip_bundle_id}: finalized without {leg}")


def _check_show_tickets(bundles: dict[str, Bundle], partners: PartnerState, report: Report) -> None:
    refunded = Counter(r["payment_reference"] for r in partners.refunds)
    held: set[str] = set()
    for bundle in bundles.values():
        tickets = bundle.ticket_ids
        held.update(tickets)
        if bundle.status is Status.FINALIZED:
            undone = [
                t for t in tickets if refunded[t] or partners.receipts.get(t, {}).get("voided")
            ]
            if len(tickets) != bundle.number_of_tickets or undone:
                report.violations.append(
                    f"{bundle.vip_bundle_id}: finalized with {len(tickets)} tickets, "
                    f"{len(undone)} refunded or voided"
                )
        elif bundle.status in UNDONE:
            unrefunded = [t for t in tickets if refunded[t] == 0]
            unvoided = [t for t in tickets if not partners.receipts.get(t, {}).get("voided")]
            if unrefunded:
                report.add(
                    "leaked_show_tickets",
                    f"{bundle.vip_bundle_id}: {bundle.status}, "
                    f"{len(unrefunded)} tickets not refunded",
                    len(unrefunded),
                )
            if unvoided:
                report.violations.append(
                    f"{bundle.vip_bundle_id}: {bundle.status}, {len(unvoided)} receipts not voided"
                )
    # Tickets the seller issued that no bundle knows: a booking made twice, or one the saga
    # gave up on without learning its tickets.
    orphans = [t for t in partners.receipts if t not in held]
    if orphans:
        report.add(
            "leaked_show_tickets", f"{len(orphans)} show tickets belong to no bundle", len(orphans)
        )


def _check_seats(
    bundles: dict[str, Bundle],
    sim: SimulatorClient,
    partners: PartnerState,
    capacity: dict[str, int],
    report: Report,
) -> None:
    flights = {f for b in bundles.values() for f in (b.inbound_flight_id, b.return_flight_id)}
    for flight_id in sorted(flights | set(capacity)):
        left = sim.flight_seats(flight_id)
        if left < 0:
            report.add("seats_below_zero", f"flight {flight_id}: {left} seats")
        if flight_id in capacity:
            held = sum(
                1
                for t in partners.flight_tickets
                if t["flight_id"] == flight_id and not t["cancelled"]
            )
            if capacity[flight_id] - held != left:
                report.violations.append(
                    f"flight {flight_id}: capacity {capacity[flight_id]}, {held} held, {left} left"
                )
    for show_id in sorted({b.show_id for b in bundles.values()}):
        if (left := sim.show_seats(show_id)) < 0:
            report.add("seats_below_zero", f"show {show_id}: {left} seats")


def settled(status: Status, allow_parked: bool = True) -> bool:
    return status in FINAL or (allow_parked and status is Status.COMPENSATION_FAILED)

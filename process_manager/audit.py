"""The audit: does a settled bundle agree with the partners' own records? Pure, no I/O.

The partners' GET lists (shared/partners-api.md) are indexed once per audit run
(`PartnerRecords.index`), then each bundle is compared in O(its tickets) dictionary lookups
(`findings`). What a bundle in each final status must find at the partners:

- `failed` / `cancelled`: no flight ticket still active under its `reference_id` (or among the
  tickets it booked); each of its show tickets refunded (`payment_reference` = ticket id) and
  its receipt voided.
- `finalized`: each of its flight tickets listed and not cancelled.

A finding's `key` (`kind:record id`) is stable across runs, so it is reported (and published as
`LedgerDriftDetected_v1`) once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from process_manager.bundle import Bundle, Status

Record = dict[str, Any]


class Kind(StrEnum):
    FLIGHT_TICKET_ACTIVE = "flight_ticket_active"
    REFUND_MISSING = "refund_missing"
    RECEIPT_NOT_VOIDED = "receipt_not_voided"
    RECEIPT_MISSING = "receipt_missing"
    FLIGHT_TICKET_CANCELLED = "flight_ticket_cancelled"
    FLIGHT_TICKET_MISSING = "flight_ticket_missing"


UNDONE = frozenset({Status.FAILED, Status.CANCELLED})
AUDITED = frozenset({Status.FINALIZED, *UNDONE})


@dataclass(frozen=True)
class Finding:
    vip_bundle_id: str
    status: Status  # the bundle's status when audited
    kind: Kind
    key: str
    description: str
    record: Record  # the partner's record; for a missing one, what was looked for

    def to_dict(self) -> dict[str, Any]:
        return {
            "vip_bundle_id": self.vip_bundle_id,
            "status": self.status.value,
            "kind": self.kind.value,
            "key": self.key,
            "description": self.description,
            "record": self.record,
        }


@dataclass(frozen=True)
class PartnerRecords:
    """The partners' lists, indexed for lookups by the ids a bundle knows."""

    flight_tickets: Mapping[str, Record] = field(default_factory=dict)  # by ticket_id
    flight_tickets_by_reference: Mapping[str, list[Record]] = field(default_factory=dict)
    refunds_by_payment: Mapping[str, list[Record]] = field(default_factory=dict)
    receipts: Mapping[str, Record] = field(default_factory=dict)  # by ticket_id

    @classmethod
    def index(
        cls,
        flight_tickets: Iterable[Record] = (),
        refunds: Iterable[Record] = (),
        receipts: Iterable[Record] = (),
    ) -> PartnerRecords:
        tickets: dict[str, Record] = {}
        by_reference: dict[str, list[Record]] = {}
        for t in flight_tickets:
            tickets[t["ticket_id"]] = t
            if t.get("reference_id"):
                by_reference.setdefault(t["reference_id"], []).append(t)
        by_payment: dict[str, list[Record]] = {}
        for r in refunds:
            by_payment.setdefault(r["payment_reference"], []).append(r)
        return cls(tickets, by_reference, by_payment, {r["ticket_id"]: r for r in receipts})


def findings(bundle: Bundle, records: PartnerRecords) -> list[Finding]:
    """What the partners' records say that disagrees with this settled bundle."""
    if bundle.status is Status.FINALIZED:
        return _finalized(bundle, records)
    if bundle.status in UNDONE:
        return _undone(bundle, records)
    return []  # in flight or parked: not settled, nothing to hold it to yet


def _finalized(bundle: Bundle, records: PartnerRecords) -> list[Finding]:
    out = []
    for ticket_id in bundle.flight_ticket_ids():
        ticket = records.flight_tickets.get(ticket_id)
        if ticket is None:
            looked_for = {"ticket_id": ticket_id, "reference_id": bundle.vip_bundle_id}
            out.append(
                _finding(
                    bundle,
                    Kind.FLIGHT_TICKET_MISSING,
                    ticket_id,
                    f"flight ticket {ticket_id} is missing from the transportation partner's "
                    "list, but the bundle is finalized",
                    looked_for,
                )
            )
        elif ticket.get("cancelled"):
            out.append(
                _finding(
                    bundle,
                    Kind.FLIGHT_TICKET_CANCELLED,
                    ticket_id,
                    f"flight ticket {ticket_id} (flight {ticket.get('flight_id')}) is cancelled "
                    "at the transportation partner, but the bundle is finalized",
                    ticket,
                )
            )
    return out


def _undone(bundle: Bundle, records: PartnerRecords) -> list[Finding]:
    out = []
    # Under its reference (catches a booking whose answer never came) or booked by id.
    tickets = {
        t["ticket_id"]: t for t in records.flight_tickets_by_reference.get(bundle.vip_bundle_id, [])
    }
    for ticket_id in bundle.flight_ticket_ids():
        if ticket_id in records.flight_tickets:
            tickets.setdefault(ticket_id, records.flight_tickets[ticket_id])
    for ticket_id, ticket in tickets.items():
        if not ticket.get("cancelled"):
            out.append(
                _finding(
                    bundle,
                    Kind.FLIGHT_TICKET_ACTIVE,
                    ticket_id,
                    f"flight ticket {ticket_id} (flight {ticket.get('flight_id')}, "
                    f"{ticket.get('passenger_name')}) is still active at the transportation "
                    f"partner, but the bundle is {bundle.status}",
                    ticket,
                )
            )
    for ticket_id in bundle.ticket_ids:
        if not records.refunds_by_payment.get(ticket_id):
            out.append(
                _finding(
                    bundle,
                    Kind.REFUND_MISSING,
                    ticket_id,
                    f"show ticket {ticket_id} has no refund at the payments partner, but the "
                    f"bundle is {bundle.status}",
                    {"payment_reference": ticket_id},
                )
            )
        receipt = records.receipts.get(ticket_id)
        if receipt is None:
            out.append(
                _finding(
                    bundle,
                    Kind.RECEIPT_MISSING,
                    ticket_id,
                    f"show ticket {ticket_id} has no receipt at the receipts partner (a voided "
                    f"one was expected), and the bundle is {bundle.status}",
                    {"ticket_id": ticket_id},
                )
            )
        elif not receipt.get("voided"):
            out.append(
                _finding(
                    bundle,
                    Kind.RECEIPT_NOT_VOIDED,
                    ticket_id,
                    f"the receipt of show ticket {ticket_id} is not voided, but the bundle is "
                    f"{bundle.status}",
                    receipt,
                )
            )
    return out


def _finding(
    bundle: Bundle, kind: Kind, record_id: str, description: str, record: Record
) -> Finding:
    return Finding(
        vip_bundle_id=bundle.vip_bundle_id,
        status=bundle.status,
        kind=kind,
        key=f"{kind}:{record_id}",
        description=description,
        record=record,
    )

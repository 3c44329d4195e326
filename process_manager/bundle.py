"""The VIP bundle: the process manager's record of one saga. Plain data, no I/O."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from process_manager import versions
from process_manager.messages import BookVipBundle, Leg, Step, utcnow


class Status(StrEnum):
    INITIALIZED = "initialized"
    BOOKING_MADE = "booking_made"
    INBOUND_BOOKED = "inbound_booked"
    RETURN_BOOKED = "return_booked"
    ROLLING_BACK = "rolling_back"
    CANCELLING = "cancelling"  # undoing on request (shared/intake-api.md, "Cancelling a bundle")
    COMPENSATION_FAILED = "compensation_failed"  # parked: an undo failed past its retries
    FINALIZED = "finalized"
    FAILED = "failed"
    CANCELLED = "cancelled"


IN_FLIGHT = frozenset(
    {
        Status.INITIALIZED,
        Status.BOOKING_MADE,
        Status.INBOUND_BOOKED,
        Status.RETURN_BOOKED,
        Status.ROLLING_BACK,
        Status.CANCELLING,
    }
)
FINAL = frozenset({Status.FINALIZED, Status.FAILED, Status.CANCELLED})
# Statuses in which undo steps run: a rollback, a cancellation, or either of them parked.
UNDOING = frozenset({Status.ROLLING_BACK, Status.CANCELLING, Status.COMPENSATION_FAILED})


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    at: datetime
    event: str
    from_status: Status | None
    to_status: Status
    event_id: str | None = None
    detail: str | None = None
    # A parked bundle retried round after round without progress: the same entry counts the
    # rounds after the first (`repeats`, the last one at `last_at`) instead of growing the
    # document by two entries a round (process_manager/saga.py, `_history`).
    repeats: int = 0
    last_at: datetime | None = None


class Failure(BaseModel):
    model_config = ConfigDict(frozen=True)
    step: str
    reason: str
    leg: Leg | None = None
    # The partner never answered, so the step may have happened: undo it by looking it up.
    in_doubt: bool = False


class Cancellation(BaseModel):
    """Who asked to cancel, why, when, and what the bundle was doing then."""

    model_config = ConfigDict(frozen=True)
    reason: str
    requested_at: datetime
    from_status: Status
    requested_by: str | None = None


class Drift(BaseModel):
    """A disagreement with a partner's records found by the audit after the bundle settled."""

    model_config = ConfigDict(frozen=True)
    key: str  # stable (`kind:record id`): the same disagreement is recorded once
    kind: str
    description: str
    record: dict[str, Any]
    at: datetime


# Idempotency keys and partner references come from these business ids only, so every retry
# and redelivery of a step sends the same key (style.md: keys from the business id).
BOOKING_NAMESPACE = uuid.UUID("5b0c2a3e-6c1f-4b8e-9a57-2f0b1c9d7e11")


def booking_id_for(vip_bundle_id: str) -> str:
    return str(uuid.uuid5(BOOKING_NAMESPACE, vip_bundle_id))


def request_digest(
    email: str,
    tickets: int,
    show_id: str,
    passengers: list[str],
    inbound: str,
    ret: str,
    tenant: str | None = None,
) -> str:
    """64 bits of SHA-256 over a request's fields and its tenant, base64url (11 characters)."""
    fields: list[object] = [email, tickets, show_id, list(passengers), inbound, ret]
    if tenant is not None:  # an id another tenant holds names a different request
        fields.append(tenant)
    canonical = json.dumps(fields)
    raw = hashlib.sha256(canonical.encode()).digest()[:8]
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Bundle(BaseModel):
    """One bundle as stored in Redis (a single JSON document, versioned for compare-and-set)."""

    model_config = ConfigDict(frozen=True)

    vip_bundle_id: str
    booking_id: str
    correlation_id: str
    # Who owns it: the tenant of the API key that booked it over HTTP (shared/intake-api.md,
    # "Tenants"); None for a bundle booked by an operator's key, the CLI or Celery.
    tenant: str | None = None
    customer_email: str
    number_of_tickets: int
    show_id: str
    passengers: list[str]
    inbound_flight_id: str
    return_flight_id: str

    status: Status = Status.INITIALIZED
    ticket_ids: list[str] = Field(default_factory=list)
    flight_tickets: dict[Leg, list[str]] = Field(default_factory=dict)
    refunded_ticket_ids: list[str] = Field(default_factory=list)
    cancelled_legs: list[Leg] = Field(default_factory=list)
    failure: Failure | None = None
    cancellation: Cancellation | None = None
    # Booking steps found, after the fact, to have booked nothing (a 409 recorded late, or the
    # answer to re-sending a step in doubt): nothing of theirs is left to undo.
    booked_nothing: list[Step] = Field(default_factory=list)
    step_failures: int = 0  # technical failures of forward steps, for giving up in time
    last_error: str | None = None
    compensation_failures: int = 0
    drift: list[Drift] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    version: int = 0
    # The document's shape (process_manager/versions.py). A release before 0.2.0 writes none
    # and drops the fields it does not know when it rewrites a document: read as 1.
    schema_version: int = versions.ABSENT
    # The releases that created the bundle and last moved it; None: one before 0.2.0 did.
    created_by_release: str | None = None
    moved_by_release: str | None = None
    # The W3C trace context of the work that took the bundle in (adapters/telemetry.py):
    # later work that starts from the stored bundle (a cancel, the reconciler, an operator's
    # resume) joins the bundle's trace through it. None when tracing is off.
    traceparent: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    # Starts of each step (`saga.start_key` -> count), read with the document from the bundle's
    # hash; never part of the document itself.
    starts: dict[str, int] = Field(default_factory=dict, exclude=True)
    # When the bundle was moved to the archive (set by the archive when it reads one back;
    # None for a bundle live in Redis); never part of the document itself.
    archived_at: datetime | None = Field(default=None, exclude=True)

    @classmethod
    def from_request(
        cls,
        request: BookVipBundle,
        correlation_id: str | None = None,
        tenant: str | None = None,
        traceparent: str | None = None,
    ) -> Bundle:
        bundle_id = str(request.vip_bundle_id or uuid.uuid4())
        return cls(
            vip_bundle_id=bundle_id,
            booking_id=booking_id_for(bundle_id),
            correlation_id=correlation_id or bundle_id,
            tenant=tenant,
            customer_email=str(request.customer_email),
            number_of_tickets=request.number_of_tickets,
            show_id=str(request.show_id),
            passengers=list(request.passengers),
            inbound_flight_id=str(request.inbound_flight_id),
            return_flight_id=str(request.return_flight_id),
            traceparent=traceparent,
        )

    @classmethod
    def from_document(
        cls, doc: str | bytes | dict[str, Any], created_by: str | None = None
    ) -> Bundle:
        """A stored document, if this release reads its schema version (else `NewerSchema`).

        `created_by`: the creating release as kept beside the document (the bundle's hash),
        for a document a release before 0.2.0 rewrote without it.
        """
        data = json.loads(doc) if isinstance(doc, str | bytes) else doc
        bundle_id = data.get("vip_bundle_id")
        version = versions.check(
            "bundle document", data.get("schema_version"), versions.DOCUMENT, bundle_id
        )
        data = {**data, "schema_version": version}
        if data.get("created_by_release") is None and created_by:
            data["created_by_release"] = created_by
        if version == versions.ABSENT:
            # Moved last by a release that records no release: whatever the document says
            # (nothing, written by such a release) is not who moved it.
            data["moved_by_release"] = None
        return cls.model_validate(data)

    def same_request(self, request: BookVipBundle, tenant: str | None = None) -> bool:
        """True when `request`, from `tenant`, asks for exactly what this bundle was created
        with (an id another tenant holds names a different request)."""
        return (
            self.tenant == tenant
            and self.customer_email == str(request.customer_email)
            and self.number_of_tickets == request.number_of_tickets
            and self.show_id == str(request.show_id)
            and self.passengers == list(request.passengers)
            and self.inbound_flight_id == str(request.inbound_flight_id)
            and self.return_flight_id == str(request.return_flight_id)
        )

    def request_digest(self) -> str:
        """A short fingerprint of what `same_request` compares: what Redis keeps of an archived
        bundle, so the same id sent again is still told apart from a different request."""
        return request_digest(
            self.customer_email,
            self.number_of_tickets,
            self.show_id,
            self.passengers,
            self.inbound_flight_id,
            self.return_flight_id,
            self.tenant,
        )

    def flight_id(self, leg: Leg) -> str:
        return self.inbound_flight_id if leg is Leg.INBOUND else self.return_flight_id

    def flight_ticket_ids(self) -> list[str]:
        return [t for leg in Leg for t in self.flight_tickets.get(leg, [])]

    def cancelled_flight_ticket_ids(self) -> list[str]:
        """The flight tickets an undo cancelled, leg by leg in the order they were cancelled."""
        return [t for leg in self.cancelled_legs for t in self.flight_tickets.get(leg, [])]

    def status_since(self) -> datetime:
        """When the bundle entered its current status (for a final one: when it settled).

        Self-transitions (a noted step failure, a drift finding) do not count.
        """
        for h in reversed(self.history):
            if h.from_status != h.to_status:
                return h.at
        return self.created_at

    def key(self, step: str) -> str:
        """The idempotency key of one step of this bundle, the same on every retry."""
        return f"{self.vip_bundle_id}:{step}"

    def answer(self) -> dict[str, str]:
        """What the intake doors answer (shared/intake-api.md)."""
        return {"vip_bundle_id": self.vip_bundle_id, "booking_id": self.booking_id}

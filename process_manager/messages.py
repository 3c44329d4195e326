"""The saga's messages: the commands it gives and the events it emits.

Commands are orders (`BookFlight`); events are facts in the past tense, versioned by name
(`FlightBooked_v1`). Everything here is JSON through pydantic; nothing is ever pickled. The
requests the doors accept are in `process_manager/requests.py` (still importable from here).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from process_manager import versions
from process_manager.requests import (  # noqa: F401  (re-exported: callers import them here)
    MAX_TICKETS,
    BookVipBundle,
    BundleId,
    CancelReason,
    CancelVipBundle,
    InvalidRequest,
    NonBlank,
    Reason,
    example_request,
    field_errors,
    parse_cancel,
    parse_request,
    validated,
)


class Leg(StrEnum):
    INBOUND = "inbound"
    RETURN = "return"


# --- commands: what the saga orders -----------------------------------------------------------


class Command(BaseModel):
    model_config = ConfigDict(frozen=True)
    vip_bundle_id: str


class BookShowTickets(Command):
    pass


class BookFlight(Command):
    leg: Leg


class FinalizeVipBundle(Command):
    pass


class RefundTicket(Command):
    ticket_id: str


class CancelFlightTickets(Command):
    leg: Leg


class Step(StrEnum):
    """The forward steps that book something at a partner (`Failure.step` names them too)."""

    SHOW = "book_show_tickets"
    INBOUND = "book_inbound_flight"
    RETURN = "book_return_flight"


class ResolveBooking(Command):
    """Settle a booking step in doubt: re-send its request with the same idempotency key.

    The partner answers a key it has seen with its first answer and does nothing more, so the
    re-send learns exactly what the original call booked (or that it was refused).
    """

    step: Step


# --- events: what happened ---------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


# Event ids are uuid5s of the event's idempotency key in this namespace.
EVENT_ID_NAMESPACE = uuid.UUID("8f3c6d2a-1b7e-4c59-a0d4-6e2f9b8a7c31")


def event_id_of(idempotency_key: str) -> str:
    """The event id of the event with this idempotency key: the same every time it is made, so
    a transition redone (after a failover lost it) republishes the same `event_id`, and a
    consumer that keeps the ids it handled sees each event once."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, idempotency_key))


class EventHeader(BaseModel):
    model_config = ConfigDict(frozen=True)
    event_id: str
    event_name: str
    published_at: datetime = Field(default_factory=utcnow)
    correlation_id: str
    idempotency_key: str
    # The event's shape (process_manager/versions.py); absent (a release before 0.2.0): 1.
    schema_version: int = versions.ABSENT
    # The W3C trace context of the work that published it (adapters/telemetry.py), so a
    # consumer can continue the bundle's trace; absent when tracing is off.
    traceparent: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _event_id_from_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_id" not in data and "idempotency_key" in data:
            return {**data, "event_id": event_id_of(str(data["idempotency_key"]))}
        return data


class Event(BaseModel):
    """An event with its header. On the wire: `{"header": {...}, "payload": {...}}`."""

    model_config = ConfigDict(frozen=True)
    published: ClassVar[bool] = True  # False: a state note kept in history, not streamed

    header: EventHeader
    vip_bundle_id: str

    @classmethod
    def name(cls) -> str:
        return cls.__name__

    @classmethod
    def create(cls, *, correlation_id: str, key: str, **payload: Any) -> Self:
        """Build an event whose idempotency key is derived from business ids only."""
        header = EventHeader(
            event_name=cls.name(),
            correlation_id=correlation_id,
            idempotency_key=key,
            schema_version=versions.EVENT,
        )
        return cls(header=header, **payload)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"header"})

    def to_message(self) -> dict[str, Any]:
        header = self.header.model_dump(mode="json")
        if header["traceparent"] is None:
            del header["traceparent"]  # tracing off: the header as it always was
        return {"header": header, "payload": self.payload()}


class VipBundleInitialized_v1(Event):
    booking_id: str
    customer_email: str
    number_of_tickets: int
    show_id: str
    passengers: list[str]
    inbound_flight_id: str
    return_flight_id: str


class BookingMade_v1(Event):
    booking_id: str
    show_id: str
    ticket_ids: list[str]


class BookingFailed_v1(Event):
    booking_id: str
    show_id: str
    reason: str
    in_doubt: bool = False


class FlightBooked_v1(Event):
    leg: Leg
    flight_id: str
    ticket_ids: list[str]


class FlightBookingFailed_v1(Event):
    leg: Leg
    flight_id: str
    reason: str
    in_doubt: bool = False  # True when the partner never answered (not a 409)


class TicketRefunded_v1(Event):
    ticket_id: str


class FlightTicketsCancelled_v1(Event):
    leg: Leg
    flight_id: str
    ticket_ids: list[str]


class CompensationFailed_v1(Event):
    step: str
    reason: str


class VipBundleFinalized_v1(Event):
    booking_id: str
    ticket_ids: list[str]
    inbound_ticket_ids: list[str]
    return_ticket_ids: list[str]


class VipBundleFailed_v1(Event):
    reason: str
    refunded_ticket_ids: list[str]
    cancelled_flight_ticket_ids: list[str]


class VipBundleCancellationRequested_v1(Event):
    reason: str
    from_status: str
    requested_by: str | None = None


class VipBundleCancelled_v1(Event):
    reason: str
    refunded_ticket_ids: list[str]
    cancelled_flight_ticket_ids: list[str]


class LedgerDriftDetected_v1(Event):
    """The audit found a partner's records disagreeing with a settled bundle (published once
    per finding: `finding_key` is recorded on the bundle)."""

    kind: str
    finding_key: str
    description: str
    record: dict[str, Any]


class StepFailed(Event):
    """A forward step failed for a technical reason; it will be tried again (history only)."""

    published: ClassVar[bool] = False
    step: str
    reason: str


class RollbackResumed(Event):
    """A parked rollback taken up again, by the reconciler or an operator (history only)."""

    published: ClassVar[bool] = False
    by: str | None = None  # who asked: an operator's key name or `cli@host`; None = reconciler


class BundleResumed(Event):
    """An operator had a bundle in flight take up its next step (or pending undos) now
    (history only: who and when)."""

    published: ClassVar[bool] = False
    by: str


class CancellationResumed(Event):
    """A parked cancellation taken up again, by the reconciler or an operator (history only)."""

    published: ClassVar[bool] = False
    by: str | None = None  # who asked: an operator's key name or `cli@host`; None = reconciler


EVENT_TYPES: dict[str, type[Event]] = {
    cls.name(): cls
    for cls in (
        VipBundleInitialized_v1,
        BookingMade_v1,
        BookingFailed_v1,
        FlightBooked_v1,
        FlightBookingFailed_v1,
        TicketRefunded_v1,
        FlightTicketsCancelled_v1,
        CompensationFailed_v1,
        VipBundleFinalized_v1,
        VipBundleFailed_v1,
        VipBundleCancellationRequested_v1,
        VipBundleCancelled_v1,
        LedgerDriftDetected_v1,
        StepFailed,
        RollbackResumed,
        BundleResumed,
        CancellationResumed,
    )
}


def parse_event(message: Any) -> Event:
    """Rebuild an event from its wire form; `InvalidRequest` when it is not one we know,
    `versions.NewerSchema` when a newer release wrote it."""
    try:
        name = message["header"]["event_name"]
        cls = EVENT_TYPES[name]
        bundle_id = message["payload"].get("vip_bundle_id")
        versions.check("event", message["header"].get("schema_version"), versions.EVENT, bundle_id)
        return cls.model_validate({"header": message["header"], **message["payload"]})
    except (KeyError, TypeError, AttributeError):
        raise InvalidRequest("event: not an event message with a known header.event_name") from None
    except ValidationError as exc:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))
        raise InvalidRequest(f"invalid {name}: {summary}") from None
    except ValueError as exc:  # a garbled or too old schema version
        raise InvalidRequest(f"invalid {name}: {exc}") from None

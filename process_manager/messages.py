"""The saga's messages: the intake request, the commands it gives and the events it emits.

Commands are orders (`BookFlight`); events are facts in the past tense, versioned by name
(`FlightBooked_v1`). Everything here is JSON through pydantic; nothing is ever pickled.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

MAX_TICKETS = 20

NonBlank = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class Leg(StrEnum):
    INBOUND = "inbound"
    RETURN = "return"


# --- the request every intake door accepts (shared/intake-api.md) ---------------------------


class BookVipBundle(BaseModel):
    """What a customer asks for. Unknown fields are refused so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vip_bundle_id: uuid.UUID | None = None
    customer_email: EmailStr
    number_of_tickets: int = Field(strict=True, ge=1, le=MAX_TICKETS)
    show_id: uuid.UUID
    passengers: list[NonBlank] = Field(min_length=1, max_length=MAX_TICKETS)
    inbound_flight_id: uuid.UUID
    return_flight_id: uuid.UUID

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(self.passengers) > self.number_of_tickets:
            raise ValueError("passengers: at most number_of_tickets names")
        if self.inbound_flight_id == self.return_flight_id:
            raise ValueError("return_flight_id: must differ from inbound_flight_id")
        return self


class InvalidRequest(ValueError):
    """A message that failed validation. `str()` names every bad field (it is what callers see)."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as `[{"field", "message"}]`, the shape every door answers with."""
    out = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        message = err["msg"]
        if not loc and ": " in message:
            # Cross-field rules name their field themselves ("passengers: at most ...").
            loc, message = message.removeprefix("Value error, ").split(": ", 1)
        out.append({"field": loc or "__root__", "message": message})
    return out


def parse_request(data: Any) -> BookVipBundle:
    """Validate an incoming request or raise `InvalidRequest` naming every bad field."""
    # pydantic checks cross-field rules only once every field is valid: name them anyway.
    return validated(BookVipBundle, data, "vip bundle request", _cross_field_errors)


M = TypeVar("M", bound=BaseModel)


def validated(
    model: type[M],
    data: Any,
    what: str,
    cross_field: Callable[[dict[str, Any]], list[dict[str, str]]] | None = None,
) -> M:
    """`data` as a `model`, or `InvalidRequest` naming every bad field (`what` the message is)."""
    if not isinstance(data, dict):
        raise InvalidRequest(
            "request: must be a JSON object", [{"field": "request", "message": "must be an object"}]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
    if cross_field is not None:
        named = {e["field"].split(".")[0] for e in errors}
        errors += [e for e in cross_field(data) if e["field"] not in named]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    raise InvalidRequest(f"invalid {what}: {summary}", errors) from None


def _cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
    errors = []
    passengers, tickets = data.get("passengers"), data.get("number_of_tickets")
    valid_count = isinstance(tickets, int) and 1 <= tickets <= MAX_TICKETS
    if isinstance(passengers, list) and valid_count and len(passengers) > tickets:
        errors.append({"field": "passengers", "message": "at most number_of_tickets names"})
    inbound, back = data.get("inbound_flight_id"), data.get("return_flight_id")
    if inbound is not None and str(inbound).lower() == str(back).lower():
        errors.append(
            {"field": "return_flight_id", "message": "must differ from inbound_flight_id"}
        )
    return errors


def example_request(**changes: Any) -> dict[str, Any]:
    """A valid request with fresh show and flight ids; a change set to `...` drops that field."""
    body: dict[str, Any] = {
        "customer_email": "ann@example.com",
        "number_of_tickets": 2,
        "show_id": str(uuid.uuid4()),
        "passengers": ["Ann Lee", "Bob Lee"],
        "inbound_flight_id": str(uuid.uuid4()),
        "return_flight_id": str(uuid.uuid4()),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


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


BundleId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class CancelReason(BaseModel):
    """The body of `POST /vip-bundles/{id}/cancel` (the id is in the path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason


class CancelVipBundle(CancelReason):
    """A cancel request, as the Celery door accepts it (shared/intake-api.md)."""

    vip_bundle_id: BundleId


C = TypeVar("C", bound=CancelReason)


def parse_cancel(model: type[C], data: Any) -> C:
    """Validate a cancel request or raise `InvalidRequest` naming every bad field."""
    return validated(model, data, "cancel request")


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
            event_name=cls.name(), correlation_id=correlation_id, idempotency_key=key
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
    """Rebuild an event from its wire form; `InvalidRequest` when it is not one we know."""
    try:
        name = message["header"]["event_name"]
        cls = EVENT_TYPES[name]
        return cls.model_validate({"header": message["header"], **message["payload"]})
    except (KeyError, TypeError):
        raise InvalidRequest("event: not an event message with a known header.event_name") from None
    except ValidationError as exc:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(exc))
        raise InvalidRequest(f"invalid {name}: {summary}") from None

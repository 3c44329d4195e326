"""What the intake doors accept: the booking request and the cancel request, and how a bad one
is refused (`InvalidRequest` naming every bad field). Everything is JSON through pydantic.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Self, TypeVar

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

"""The simulator's partners' books: request bodies, seats, tickets, refunds, receipts, fault
rules, quotas and the call log, all in one `SimulatorState` (the HTTP side is `app.py`).

Its methods never await: each request's check-and-update runs in one go on the event loop, so
two requests racing for the last seats can never both get them, and a replayed idempotency key
is never booked twice.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from starlette.responses import JSONResponse, Response

from partner_simulator.backpressure import (
    QUOTA_RETRY_AFTER_S,
    Quota,
    Quotas,
    retry_after_header,
    whole_if_integral,
)

DEFAULT_SEATS = 1_000_000
DEFAULT_MAX_CALLS = 200_000
_JITTER = random.Random()  # latency jitter only; fault rules have their own seeded generators

# ---------------------------------------------------------------------------------------------
# Request bodies. Strict so that "2" is not a number of tickets; extra fields are ignored.
# Ids are opaque non-empty strings: the contract says "uuid" but clients' keys need not be.

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ShowBookingIn(_Body):
    booking_id: NonEmptyStr
    customer_address: str
    event_id: NonEmptyStr
    number_of_tickets: int = Field(ge=1)


class FlightBookingIn(_Body):
    customer_email: str
    flight_id: NonEmptyStr
    passenger_names: list[str] = Field(min_length=1)
    reference_id: str
    idempotency_key: NonEmptyStr


class RefundIn(_Body):
    payment_reference: NonEmptyStr
    reason: str
    deduplication_id: NonEmptyStr


class VoidReceiptIn(_Body):
    ticket_id: NonEmptyStr
    reason: str
    idempotent_id: NonEmptyStr


class SeatsIn(_Body):
    seats: int = Field(ge=0)


class LatencyIn(_Body):
    delay_ms: int = Field(ge=0)
    jitter_ms: int = Field(default=0, ge=0)


class FaultIn(_Body):
    path_prefix: str
    status: int | None = Field(default=None, ge=0, le=599)
    times: int | None = Field(default=None, ge=0)
    delay_ms: int = Field(default=0, ge=0)
    rate: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int = 0
    methods: list[str] | None = None
    # Capped so that now + retry_after is still a date `formatdate` can write.
    retry_after: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
    retry_after_http_date: bool = False

    # Fields validate in order, so `info.data` holds the fields above; an error raised here is
    # reported under this field's name, as the controls' 400s promise.
    @field_validator("retry_after")
    @classmethod
    def _retry_after_needs_status(cls, value: float | None, info: ValidationInfo) -> float | None:
        # A Retry-After on an answer the call was processed for would tell clients a lie.
        if value is not None and not info.data.get("status"):
            raise ValueError("retry_after needs a status")
        return value

    @field_validator("retry_after_http_date")
    @classmethod
    def _http_date_needs_retry_after(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("retry_after") is None:
            raise ValueError("retry_after_http_date needs retry_after")
        return value


class QuotaIn(_Body):
    path_prefix: NonEmptyStr
    per_second: int = Field(ge=0)


Model = TypeVar("Model", bound=_Body)

# ---------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True, slots=True)
class Answer:
    """What a partner endpoint answers; cached as is for idempotent replays."""

    status: int
    body: Any = None  # None -> empty body (204)
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> Response:
        headers = dict(self.headers) if self.headers else None
        if self.body is None:
            return Response(status_code=self.status, headers=headers)
        return JSONResponse(self.body, status_code=self.status, headers=headers)


def error_answer(status: int, message: str, field_name: str | None = None) -> Answer:
    body: dict[str, str] = {"error": message}
    if field_name is not None:
        body["field"] = field_name
    return Answer(status, body)


def throttled_answer(quota: Quota) -> Answer:
    """A call over `quota`: refused before it is processed, as the contract's 429 says."""
    message = f"over {quota.per_second} calls a second under {quota.path_prefix}"
    return Answer(429, {"error": message}, (("Retry-After", str(QUOTA_RETRY_AFTER_S)),))


@dataclass
class FaultRule:
    path_prefix: str
    status: int | None  # None: only delay, then answer normally
    times: int | None  # remaining budget; None: unlimited
    delay_ms: int
    rate: float | None
    methods: frozenset[str] | None
    rng: random.Random
    retry_after: float | int | None = None  # seconds; sent as `Retry-After` with `status`
    retry_after_http_date: bool = False

    @classmethod
    def from_input(cls, req: FaultIn) -> FaultRule:
        times = req.times
        if times is None and req.rate is None:
            times = 1
        return cls(
            path_prefix=req.path_prefix,
            status=req.status or None,
            times=times,
            delay_ms=req.delay_ms,
            rate=req.rate,
            methods=frozenset(m.upper() for m in req.methods) if req.methods else None,
            rng=random.Random(req.seed),
            retry_after=None if req.retry_after is None else whole_if_integral(req.retry_after),
            retry_after_http_date=req.retry_after_http_date,
        )

    def answer(self) -> Answer:
        """The injected failure (for a rule with a status): no effect, never cached."""
        if self.status is None:
            raise ValueError("a delay-only rule answers normally")
        answer = error_answer(self.status, "injected fault")
        if self.retry_after is None:
            return answer
        header = retry_after_header(self.retry_after, self.retry_after_http_date)
        return Answer(answer.status, answer.body, (("Retry-After", header),))

    def fires(self, method: str, path: str) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.times is not None and self.times <= 0:
            return False
        if self.rate is not None and self.rng.random() >= self.rate:
            return False
        if self.times is not None:
            self.times -= 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "path_prefix": self.path_prefix,
            "status": self.status,
            "times": self.times,
            "delay_ms": self.delay_ms,
            "rate": self.rate,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "retry_after": self.retry_after,
            "retry_after_http_date": self.retry_after_http_date,
        }


@dataclass
class SimulatorState:
    default_seats: int = DEFAULT_SEATS
    max_calls: int = DEFAULT_MAX_CALLS
    initial_latency_ms: int = 0
    initial_jitter_ms: int = 0
    latency_ms: int = -1  # -1: take initial_latency_ms
    jitter_ms: int = -1  # -1: take initial_jitter_ms
    # Seats left per show/flight; absent means default_seats.
    show_seats: dict[str, int] = field(default_factory=dict)
    flight_seats: dict[str, int] = field(default_factory=dict)
    # Flight tickets as served by GET, by ticket id, plus indexes for the filtered GET.
    flight_tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    tickets_by_reference: dict[str, list[str]] = field(default_factory=dict)
    tickets_by_flight: dict[str, list[str]] = field(default_factory=dict)
    # Refunds by an internal id (insertion order is the list order), indexed by the ticket paid.
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds_by_reference: dict[str, list[str]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # First answer per (path, idempotency key).
    answers: dict[tuple[str, str], Answer] = field(default_factory=dict)
    faults: list[FaultRule] = field(default_factory=list)
    quotas: Quotas = field(default_factory=Quotas)
    calls: deque[dict[str, Any]] = field(default_factory=deque)
    # Survives reset so that a poller's `since` cursor stays valid.
    seq: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            self.latency_ms = self.initial_latency_ms
        if self.jitter_ms < 0:
            self.jitter_ms = self.initial_jitter_ms
        self.calls = deque(self.calls, maxlen=self.max_calls)

    def reset(self) -> None:
        fresh = SimulatorState(
            default_seats=self.default_seats,
            max_calls=self.max_calls,
            initial_latency_ms=self.initial_latency_ms,
            initial_jitter_ms=self.initial_jitter_ms,
            seq=self.seq,
        )
        vars(self).update(vars(fresh))

    def latency_draw_ms(self) -> float:
        """This call's share of the global latency: delay_ms +- a uniform jitter, at least 0."""
        if not self.jitter_ms:
            return float(self.latency_ms)
        return max(0.0, self.latency_ms + _JITTER.uniform(-self.jitter_ms, self.jitter_ms))

    # -- faults and call log ------------------------------------------------------------------

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self.faults:
            if rule.fires(method, path):
                if rule.times == 0:
                    self.faults.remove(rule)  # spent; keeps the scan short
                return rule
        return None

    def record_call(self, **entry: Any) -> None:
        self.seq += 1
        self.calls.append({"seq": self.seq, **entry})

    def calls_since(self, since: int, path_prefix: str | None) -> list[dict[str, Any]]:
        # Seqs in the log are contiguous and end at self.seq, so the tail is found without a scan.
        newer = min(len(self.calls), max(self.seq - since, 0))
        selected = list(islice(reversed(self.calls), newer))
        selected.reverse()
        if path_prefix:
            selected = [c for c in selected if c["path"].startswith(path_prefix)]
        return selected

    # -- partner effects (synchronous: see module docstring) -----------------------------------

    def book_show(self, req: ShowBookingIn) -> Answer:
        left = self.show_seats.get(req.event_id, self.default_seats)
        if left < req.number_of_tickets:
            return error_answer(409, f"event {req.event_id}: {left} seats left")
        self.show_seats[req.event_id] = left - req.number_of_tickets
        ticket_ids = [str(uuid.uuid4()) for _ in range(req.number_of_tickets)]
        for ticket_id in ticket_ids:
            receipt = {"ticket_id": ticket_id, "voided": False, "void_reason": None}
            self.receipts[ticket_id] = receipt
        return Answer(201, {"booking_id": req.booking_id, "ticket_ids": ticket_ids})

    def book_flight(self, req: FlightBookingIn) -> Answer:
        left = self.flight_seats.get(req.flight_id, self.default_seats)
        if left < len(req.passenger_names):
            return error_answer(409, f"flight {req.flight_id}: {left} seats left")
        self.flight_seats[req.flight_id] = left - len(req.passenger_names)
        ticket_ids = []
        for name in req.passenger_names:
            ticket_id = str(uuid.uuid4())
            ticket_ids.append(ticket_id)
            self.flight_tickets[ticket_id] = {
                "ticket_id": ticket_id,
                "flight_id": req.flight_id,
                "reference_id": req.reference_id,
                "passenger_name": name,
                "customer_email": req.customer_email,
                "cancelled": False,
            }
            self.tickets_by_reference.setdefault(req.reference_id, []).append(ticket_id)
            self.tickets_by_flight.setdefault(req.flight_id, []).append(ticket_id)
        return Answer(201, {"ticket_ids": ticket_ids})

    def cancel_flight_ticket(self, ticket_id: str) -> Answer:
        ticket = self.flight_tickets.get(ticket_id)
        if ticket is None or ticket["cancelled"]:
            return error_answer(404, f"no active flight ticket {ticket_id}")
        ticket["cancelled"] = True
        flight_id = ticket["flight_id"]
        self.flight_seats[flight_id] = self.flight_seats.get(flight_id, self.default_seats) + 1
        return Answer(204)

    def list_flight_tickets(
        self, reference_id: str | None = None, flight_id: str | None = None
    ) -> list[dict[str, Any]]:
        if reference_id is not None:
            ids = self.tickets_by_reference.get(reference_id, [])
        elif flight_id is not None:
            ids = self.tickets_by_flight.get(flight_id, [])
        else:
            return list(self.flight_tickets.values())
        tickets = [self.flight_tickets[i] for i in ids]
        if reference_id is not None and flight_id is not None:
            tickets = [t for t in tickets if t["flight_id"] == flight_id]
        return tickets

    def refund(self, req: RefundIn) -> Answer:
        refund_id = str(uuid.uuid4())
        self.refunds[refund_id] = {
            "payment_reference": req.payment_reference,
            "reason": req.reason,
            "deduplication_id": req.deduplication_id,
        }
        self.refunds_by_reference.setdefault(req.payment_reference, []).append(refund_id)
        return Answer(201, {"refund_id": refund_id, "payment_reference": req.payment_reference})

    def list_refunds(self, payment_reference: str | None = None) -> list[dict[str, Any]]:
        if payment_reference is None:
            return list(self.refunds.values())
        return [self.refunds[i] for i in self.refunds_by_reference.get(payment_reference, [])]

    def list_receipts(self, ticket_id: str | None = None) -> list[dict[str, Any]]:
        if ticket_id is None:
            return list(self.receipts.values())
        receipt = self.receipts.get(ticket_id)
        return [receipt] if receipt is not None else []

    def void_receipt(self, req: VoidReceiptIn) -> Answer:
        receipt = self.receipts.get(req.ticket_id)
        if receipt is None:
            receipt = self.receipts[req.ticket_id] = {"ticket_id": req.ticket_id}
        if not receipt.get("voided"):  # a receipt is voided once; the first reason stays
            receipt["voided"] = True
            receipt["void_reason"] = req.reason
        return Answer(200, {"ticket_id": req.ticket_id, "voided": True})

    # -- drift: partner records changed behind the product's back (controls only) -------------

    def revive_flight_ticket(self, ticket_id: str) -> dict[str, Any] | None:
        """Un-cancel a ticket (its seat taken again), as if the cancellation never happened."""
        ticket = self.flight_tickets.get(ticket_id)
        if ticket is None:
            return None
        if ticket["cancelled"]:
            ticket["cancelled"] = False
            flight_id = ticket["flight_id"]
            self.flight_seats[flight_id] = self.flight_seats.get(flight_id, self.default_seats) - 1
        return ticket

    def forget_refunds(self, payment_reference: str) -> int:
        """Drop every refund of one payment; how many there were."""
        ids = self.refunds_by_reference.pop(payment_reference, [])
        for refund_id in ids:
            del self.refunds[refund_id]
        return len(ids)

    def unvoid_receipt(self, ticket_id: str) -> dict[str, Any] | None:
        receipt = self.receipts.get(ticket_id)
        if receipt is None:
            return None
        receipt["voided"] = False
        receipt["void_reason"] = None
        return receipt

"""HTTP clients for the four partners (shared/partners-api.md): their requests and answers.

How a call is made (the fleet's partner gate, retries, deadline, `Retry-After`) is one policy,
`adapters/partner_policy.py`, wrapped around every request here; this module only knows what
each partner is sent and what its answers mean. A 409 is a business refusal with its own type.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, Field, ValidationError

from adapters.metrics import METER, Meter, partner_of
from adapters.partner_errors import (
    BusinessRefusal,
    NoFlightTicketsAvailable,
    PartnerBusy,
    PartnerError,
    PartnerProtocolError,
    PartnerUnavailable,
    ShowSoldOut,
)
from adapters.partner_gate import Admission, PartnerGate
from adapters.partner_policy import CallPolicy, RetryAfterPolicy

__all__ = [  # the error family, re-exported: callers catch what a partner call ends in here
    "BusinessRefusal",
    "NoFlightTicketsAvailable",
    "PartnerBusy",
    "PartnerError",
    "PartnerProtocolError",
    "PartnerUnavailable",
    "Partners",
    "ShowSoldOut",
]


class ShowBooking(BaseModel):
    booking_id: str
    ticket_ids: list[str] = Field(min_length=1)


class FlightBooking(BaseModel):
    ticket_ids: list[str] = Field(min_length=1)


class FlightTicket(BaseModel):
    ticket_id: str
    flight_id: str
    reference_id: str | None = None
    passenger_name: str | None = None
    customer_email: str | None = None
    cancelled: bool = False


class Refund(BaseModel):
    payment_reference: str
    reason: str | None = None
    deduplication_id: str | None = None


class Receipt(BaseModel):
    ticket_id: str
    voided: bool = False
    void_reason: str | None = None


M = TypeVar("M", bound=BaseModel)


class Partners:
    """One client for all partners behind `GATEWAY_URL`. Thread-safe (an HTTP connection pool
    per thread); make one per process."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 5.0,
        attempts: int = 5,
        max_wait_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
        meter: Meter = METER,
        deadline_s: float | None = None,
        gate: PartnerGate | None = None,
        undo: bool = False,
        retry_after: RetryAfterPolicy | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.meter = meter  # where partner outcomes are counted (the process's own by default)
        self._options: dict[str, Any] = {
            "base_url": base_url,
            "timeout": timeout_s,
            "transport": transport,
            # A private CA and a client certificate (PARTNER_*_FILE, adapters/tls.py); default:
            # httpx's own verification, made once (see `http`).
            "verify": verify,
            # A thread makes one call at a time: one kept-alive connection is all it needs.
            "limits": httpx.Limits(max_connections=None, max_keepalive_connections=2),
        }
        # One httpx client per thread: a `-P threads -c 64` process sharing one client would
        # share one connection pool, which scans all its connections under a lock on every
        # request and response (httpcore): ~9% of such a worker's GIL time went there.
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()
        self.policy = CallPolicy(
            timeout_s=timeout_s,
            attempts=attempts,
            max_wait_s=max_wait_s,
            deadline_s=deadline_s,
            gate=gate,
            undo=undo,
            retry_after=retry_after or RetryAfterPolicy(),
            meter=meter,
        )

    @property
    def http(self) -> httpx.Client:
        """This thread's client (made on its first call)."""
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._clients_lock:
                if self._options["verify"] is None:
                    # One SSL context for every thread's client: given `verify=True`, httpx
                    # makes a context per client and loads the CA bundle into it, 20-70 ms of
                    # CPU holding the GIL, paid by the first call of each new thread (the
                    # undo's side-by-side calls: a rollback in a few hundred waited on it).
                    # The same context httpx would make (SSL_CERT_FILE/DIR, else certifi).
                    self._options["verify"] = httpx.create_ssl_context()
                client = self._local.client = httpx.Client(**self._options)
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()

    # --- shows ---
    def book_show_tickets(
        self,
        *,
        booking_id: str,
        customer_address: str,
        event_id: str,
        number_of_tickets: int,
        correlation_id: str | None = None,
        admitted: Admission | None = None,
    ) -> list[str]:
        body = {
            "booking_id": booking_id,
            "customer_address": customer_address,
            "event_id": event_id,
            "number_of_tickets": number_of_tickets,
        }
        reply = self._send(
            "POST",
            "/dead-nation-api/ticket/booking",
            body,
            key=booking_id,
            correlation_id=correlation_id,
            ok=(200, 201),
            on_409=ShowSoldOut(f"show {event_id}: not enough seats left"),
            admitted=admitted,
        )
        booking = _parse(ShowBooking, reply)
        if len(booking.ticket_ids) != number_of_tickets:
            raise PartnerProtocolError(
                f"shows: asked for {number_of_tickets} tickets, got {len(booking.ticket_ids)}"
            )
        return booking.ticket_ids

    # --- flights ---
    def book_flight(
        self,
        *,
        customer_email: str,
        flight_id: str,
        passenger_names: list[str],
        reference_id: str,
        idempotency_key: str,
        correlation_id: str | None = None,
        admitted: Admission | None = None,
    ) -> list[str]:
        body = {
            "customer_email": customer_email,
            "flight_id": flight_id,
            "passenger_names": passenger_names,
            "reference_id": reference_id,
            "idempotency_key": idempotency_key,
        }
        reply = self._send(
            "PUT",
            "/transportation-api/flight-tickets",
            body,
            key=idempotency_key,
            correlation_id=correlation_id,
            ok=(201, 200),
            on_409=NoFlightTicketsAvailable(f"flight {flight_id}: no seats left"),
            admitted=admitted,
        )
        booking = _parse(FlightBooking, reply)
        if len(booking.ticket_ids) != len(passenger_names):
            raise PartnerProtocolError(
                f"flights: {len(passenger_names)} passengers, {len(booking.ticket_ids)} tickets"
            )
        return booking.ticket_ids

    def cancel_flight_ticket(self, ticket_id: str, correlation_id: str | None = None) -> None:
        """Cancel one ticket; a 404 (unknown or already cancelled) counts as done."""
        self._send(
            "DELETE",
            f"/transportation-api/flight-tickets/{ticket_id}",
            None,
            key=None,
            correlation_id=correlation_id,
            ok=(204, 200, 404),
        )

    def flight_tickets(self, reference_id: str | None = None) -> list[FlightTicket]:
        """Every flight ticket, or those booked under one `reference_id` (a bundle id)."""
        path = "/transportation-api/flight-tickets"
        tickets = self._list(path, FlightTicket, "reference_id", reference_id)
        return [t for t in tickets if reference_id is None or t.reference_id == reference_id]

    # --- payments and receipts ---
    def refund(
        self,
        *,
        payment_reference: str,
        reason: str,
        deduplication_id: str,
        correlation_id: str | None = None,
    ) -> None:
        body = {
            "payment_reference": payment_reference,
            "reason": reason,
            "deduplication_id": deduplication_id,
        }
        self._send(
            "PUT",
            "/payments-api/refunds",
            body,
            key=deduplication_id,
            correlation_id=correlation_id,
            ok=(200, 201, 204),
        )

    def void_receipt(
        self, *, ticket_id: str, reason: str, idempotent_id: str, correlation_id: str | None = None
    ) -> None:
        body = {"ticket_id": ticket_id, "reason": reason, "idempotent_id": idempotent_id}
        self._send(
            "PUT",
            "/receipts-api/void-receipt",
            body,
            key=idempotent_id,
            correlation_id=correlation_id,
            ok=(200, 201, 204),
        )

    def refunds(self, payment_reference: str | None = None) -> list[Refund]:
        """Every refund made, or those of one payment (a show ticket id)."""
        refunds = self._list(
            "/payments-api/refunds", Refund, "payment_reference", payment_reference
        )
        return [r for r in refunds if payment_reference in (None, r.payment_reference)]

    def receipts(self, ticket_id: str | None = None) -> list[Receipt]:
        """The receipts, or the one of a show ticket."""
        receipts = self._list("/receipts-api/receipts", Receipt, "ticket_id", ticket_id)
        return [r for r in receipts if ticket_id in (None, r.ticket_id)]

    def _list(self, path: str, model: type[M], name: str, value: str | None) -> list[M]:
        # The query filter is a courtesy some servers honour; the callers filter as well.
        params = {name: value} if value else None
        reply = self._send("GET", path, None, key=None, ok=(200,), params=params)
        if not isinstance(reply, list):
            raise PartnerProtocolError(f"GET {path}: not a JSON array")
        return [_parse(model, item) for item in reply]

    # --- one request, with the retry policy ---
    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        key: str | None,
        ok: tuple[int, ...],
        correlation_id: str | None = None,
        on_409: PartnerError | None = None,
        params: dict[str, str] | None = None,
        admitted: Admission | None = None,
    ) -> Any:
        """One call under the policy; `admitted`: the gate's answer for the first try, asked
        already (with the step's start, tasks/steps.py `due_calling`)."""
        headers = {}
        if key is not None:
            headers["Idempotency-Key"] = key
        if correlation_id is not None:
            headers["Correlation-ID"] = correlation_id

        def try_once(timeout: float) -> httpx.Response:
            return self.http.request(
                method, path, json=body, headers=headers, params=params, timeout=timeout
            )

        response = self.policy.call(method, path, try_once, admitted)
        status = response.status_code
        self.meter.partner_call(partner_of(path), "ok" if status in ok else "refused")
        if status == 409 and on_409 is not None:
            raise on_409
        if status not in ok:
            raise PartnerProtocolError(
                f"{method} {path}: unexpected {status}: {response.text[:200]}"
            )
        if status in (204, 404) or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise PartnerProtocolError(f"{method} {path}: reply is not JSON") from None


def _parse(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise PartnerProtocolError(f"{model.__name__}: invalid reply (fields: {fields})") from None

"""HTTP simulator of the four partners in /work/shared/partners-api.md, plus /_sim controls.

Everything lives in one `SimulatorState` (`state.py`). Handlers are async but never `await`
between reading and updating state (the only awaits are reading the body and the injected
delay, both before any check), so on the single event loop each request's check-and-update is
atomic: two requests racing for the last seats can never both get them, and a replayed key is
never booked twice.

The partner GET lists answer every record, as the contract says; courtesy filters, served from
indexes, narrow them: `?reference_id=` / `?flight_id=` (flight tickets), `?payment_reference=`
(refunds), `?ticket_id=` (receipts).

Controls under `/_sim` (never logged, delayed or faulted):
- `GET /_sim/health`, `GET /_sim/calls?since=&path_prefix=`, `POST /_sim/reset`.
- `GET|PUT /_sim/flights/{flight_id}`, `GET|PUT /_sim/shows/{event_id}` `{"seats": N}`.
- `POST|GET|DELETE /_sim/faults`: `{"path_prefix": "/payments-api", "status": 503,
  "times": 3, "delay_ms": 0, "rate": null, "seed": 0, "methods": null, "retry_after": 2}`.
  The next `times` matching calls (or each with probability `rate`) are delayed, then, with a
  `status` (429 is one like any other), answered `{"error": "injected fault"}`, not processed
  and not cached. `retry_after` (seconds >= 0) adds `Retry-After`, as delta-seconds (a fraction
  is sent as given: a lenient client's case); our extra `"retry_after_http_date": true` sends
  the HTTP-date that many seconds ahead instead, so clients can be tried on both forms. Both
  need a `status`: a Retry-After on a processed call would lie.
- `GET|PUT|DELETE /_sim/quota` `{"path_prefix": "/transportation-api", "per_second": 10}`:
  past that many calls under the prefix in any sliding second (calls it refuses do not
  count; see `backpressure.py`), answer `429` with `Retry-After: 1`, not processed and not
  cached, before any fault rule is consulted (its 429 waits the global latency only). `0`
  lifts a prefix's quota, DELETE lifts all; GET lists them.
- The call log records each call's `status`, `fault`, `throttled` (refused by a quota) and
  `retry_after` (the seconds sent in `Retry-After`, whichever form, or null).
- `GET|PUT /_sim/latency` `{"delay_ms": N, "jitter_ms": J}`: every partner call waits
  `delay_ms` plus a uniform draw in [-J, +J] ms (never below 0, so the mean stays `delay_ms`
  while J <= N), as real partners answer in a spread, not a constant.
- Read-only views that leave the call log alone: `GET /_sim/flight-tickets`, `/_sim/refunds`,
  `/_sim/receipts` (same filters as the partner lists).
- Drift, to change partner records behind the product's back (what `vip-bundles audit` finds):
  `POST /_sim/flight-tickets/{ticket_id}/revive` un-cancels a flight ticket (its seat is taken
  again), `DELETE /_sim/refunds/{payment_reference}` forgets every refund of that ticket
  (`{"forgotten": n}`), `POST /_sim/receipts/{ticket_id}/unvoid` un-voids a receipt. Each
  answers the record as it is now, or 404 for an unknown ticket. Cancelling a finalized
  bundle's flight ticket needs no control: the partner's own DELETE does it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from partner_simulator.backpressure import QUOTA_RETRY_AFTER_S
from partner_simulator.state import (
    DEFAULT_MAX_CALLS,
    DEFAULT_SEATS,
    Answer,
    FaultIn,
    FaultRule,
    FlightBookingIn,
    LatencyIn,
    Model,
    QuotaIn,
    RefundIn,
    SeatsIn,
    ShowBookingIn,
    SimulatorState,
    VoidReceiptIn,
    error_answer,
    throttled_answer,
)

SIM_PREFIX = "/_sim"
SHOW_BOOKING_PATH = "/dead-nation-api/ticket/booking"
FLIGHTS_PATH = "/transportation-api/flight-tickets"
REFUNDS_PATH = "/payments-api/refunds"
VOID_RECEIPT_PATH = "/receipts-api/void-receipt"
RECEIPTS_PATH = "/receipts-api/receipts"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# ---------------------------------------------------------------------------------------------
# HTTP plumbing

# (state, request, parsed JSON body or _MALFORMED) -> answer. Must not await: see docstring.
Effect = Callable[[SimulatorState, Request, Any], Answer]
Endpoint = Callable[[Request], Awaitable[Response]]

_MALFORMED = object()


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return _MALFORMED


def _validate(model: type[Model], body: Any) -> Model | Answer:
    if body is _MALFORMED:
        return error_answer(400, "malformed JSON body", "body")
    if not isinstance(body, dict):
        return error_answer(400, "body must be a JSON object", "body")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        return error_answer(400, f"{first['msg']}", str(loc[0]) if loc else "body")


def _keyed(
    model: type[Model], key_field: str, effect: Callable[[SimulatorState, Model], Answer]
) -> Effect:
    """A mutating endpoint: validate, check the key, replay the first answer or run the effect."""

    def run(state: SimulatorState, request: Request, body: Any) -> Answer:
        parsed = _validate(model, body)
        if isinstance(parsed, Answer):
            return parsed
        key: str = getattr(parsed, key_field)
        header = request.headers.get("idempotency-key")
        if header is not None and header != key:
            return error_answer(
                400, f"Idempotency-Key header differs from body field {key_field}", key_field
            )
        cache_key = (request.scope["path"], key)
        cached = state.answers.get(cache_key)
        if cached is not None:
            return cached
        answer = effect(state, parsed)
        state.answers[cache_key] = answer  # 409s too: a replay must not book later freed seats
        return answer

    return run


def _partner(state: SimulatorState, effect: Effect) -> Endpoint:
    """Wrap a partner effect with latency, fault injection and the call log."""

    async def endpoint(request: Request) -> Response:
        at = time.time()
        raw = await request.body()
        method: str = request.scope["method"]
        path: str = request.scope["path"]
        # A quota is the partner's edge: counted on arrival, and a call it refuses takes
        # nothing from a fault rule's budget. It still waits the partner's latency.
        refusal = state.quotas.refusal(path, time.monotonic()) if state.quotas else None
        # Budget is taken before sleeping so concurrent requests cannot overspend a rule.
        rule = state.take_fault(method, path) if refusal is None else None
        delay_ms = state.latency_draw_ms() + (rule.delay_ms if rule is not None else 0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        # No await from here on: the check-and-update below is atomic on the event loop.
        body = _parse_json(raw)
        fault_status = rule.status if rule is not None else None
        retry_after: float | None = None
        if refusal is not None:  # not processed, not cached
            answer, retry_after = throttled_answer(refusal), QUOTA_RETRY_AFTER_S
        elif rule is not None and fault_status:  # not processed, not cached
            answer, retry_after = rule.answer(), rule.retry_after
        else:
            answer = effect(state, request, body)
        state.record_call(
            at=at,
            method=method,
            path=path,
            headers=dict(request.headers),
            body=None if body is _MALFORMED else body,
            status=answer.status,
            delay_ms=round(delay_ms, 1),
            fault=bool(fault_status),
            throttled=refusal is not None,
            retry_after=retry_after,
        )
        return answer.response()

    return endpoint


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _bad_request(answer: Answer) -> JSONResponse:
    return _json(answer.body, answer.status)


def _cancel(state: SimulatorState, request: Request, body: Any) -> Answer:
    return state.cancel_flight_ticket(request.path_params["ticket_id"])


def _list_tickets(state: SimulatorState, request: Request, body: Any) -> Answer:
    q = request.query_params
    return Answer(200, state.list_flight_tickets(q.get("reference_id"), q.get("flight_id")))


def _list_refunds(state: SimulatorState, request: Request, body: Any) -> Answer:
    return Answer(200, state.list_refunds(request.query_params.get("payment_reference")))


def _list_receipts(state: SimulatorState, request: Request, body: Any) -> Answer:
    return Answer(200, state.list_receipts(request.query_params.get("ticket_id")))


def _not_found(state: SimulatorState, request: Request, body: Any) -> Answer:
    return error_answer(404, f"no endpoint {request.scope['method']} {request.scope['path']}")


# The whole partner surface: (path, method, effect). Mutations name their idempotency key field.
PARTNER_ENDPOINTS: list[tuple[str, str, Effect]] = [
    (SHOW_BOOKING_PATH, "POST", _keyed(ShowBookingIn, "booking_id", SimulatorState.book_show)),
    (FLIGHTS_PATH, "PUT", _keyed(FlightBookingIn, "idempotency_key", SimulatorState.book_flight)),
    (FLIGHTS_PATH, "GET", _list_tickets),
    (FLIGHTS_PATH + "/{ticket_id}", "DELETE", _cancel),
    (REFUNDS_PATH, "PUT", _keyed(RefundIn, "deduplication_id", SimulatorState.refund)),
    (REFUNDS_PATH, "GET", _list_refunds),
    (VOID_RECEIPT_PATH, "PUT", _keyed(VoidReceiptIn, "idempotent_id", SimulatorState.void_receipt)),
    (RECEIPTS_PATH, "GET", _list_receipts),
]


def _partner_routes(state: SimulatorState) -> list[Route]:
    return [
        Route(path, _partner(state, effect), methods=[method])
        for path, method, effect in PARTNER_ENDPOINTS
    ]


def _sim_routes(state: SimulatorState) -> list[Route]:
    """Controls: never logged, delayed or faulted."""

    async def health(request: Request) -> Response:
        return _json({"ok": True})

    async def calls(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
        except ValueError:
            return _bad_request(error_answer(400, "since must be an integer", "since"))
        selected = state.calls_since(since, request.query_params.get("path_prefix"))
        return _json({"calls": selected, "last_seq": state.seq})

    def seats_endpoints(attr: str, id_param: str) -> tuple[Endpoint, Endpoint]:
        # getattr on each request because reset() replaces the dicts.
        async def get_seats(request: Request) -> Response:
            item_id = request.path_params[id_param]
            seats = getattr(state, attr).get(item_id, state.default_seats)
            return _json({id_param: item_id, "seats": seats})

        async def put_seats(request: Request) -> Response:
            parsed = _validate(SeatsIn, _parse_json(await request.body()))
            if isinstance(parsed, Answer):
                return _bad_request(parsed)
            item_id = request.path_params[id_param]
            getattr(state, attr)[item_id] = parsed.seats
            return _json({id_param: item_id, "seats": parsed.seats})

        return get_seats, put_seats

    get_flight, put_flight = seats_endpoints("flight_seats", "flight_id")
    get_show, put_show = seats_endpoints("show_seats", "event_id")

    async def add_fault(request: Request) -> Response:
        parsed = _validate(FaultIn, _parse_json(await request.body()))
        if isinstance(parsed, Answer):
            return _bad_request(parsed)
        rule = FaultRule.from_input(parsed)
        state.faults.append(rule)
        return _json(rule.describe(), 201)

    async def list_faults(request: Request) -> Response:
        return _json({"faults": [rule.describe() for rule in state.faults]})

    async def clear_faults(request: Request) -> Response:
        state.faults.clear()
        return Response(status_code=204)

    async def list_quotas(request: Request) -> Response:
        return _json({"quotas": state.quotas.describe()})

    async def put_quota(request: Request) -> Response:
        parsed = _validate(QuotaIn, _parse_json(await request.body()))
        if isinstance(parsed, Answer):
            return _bad_request(parsed)
        return _json(state.quotas.set(parsed.path_prefix, parsed.per_second))

    async def clear_quotas(request: Request) -> Response:
        state.quotas.clear()
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"ok": True})

    async def get_latency(request: Request) -> Response:
        return _json({"delay_ms": state.latency_ms, "jitter_ms": state.jitter_ms})

    async def put_latency(request: Request) -> Response:
        parsed = _validate(LatencyIn, _parse_json(await request.body()))
        if isinstance(parsed, Answer):
            return _bad_request(parsed)
        state.latency_ms, state.jitter_ms = parsed.delay_ms, parsed.jitter_ms
        return _json({"delay_ms": state.latency_ms, "jitter_ms": state.jitter_ms})

    # Read-only views of partner state that, unlike the partner GETs, leave the call log and
    # fault budgets alone, so tests can inspect without disturbing what they measure.
    async def flight_tickets(request: Request) -> Response:
        q = request.query_params
        return _json(state.list_flight_tickets(q.get("reference_id"), q.get("flight_id")))

    async def refunds(request: Request) -> Response:
        return _json(state.list_refunds(request.query_params.get("payment_reference")))

    async def receipts(request: Request) -> Response:
        return _json(state.list_receipts(request.query_params.get("ticket_id")))

    # Drift: change partner records behind the product's back, for the audit to find.
    async def revive_flight_ticket(request: Request) -> Response:
        ticket_id = request.path_params["ticket_id"]
        ticket = state.revive_flight_ticket(ticket_id)
        if ticket is None:
            return _json({"error": f"no flight ticket {ticket_id}"}, 404)
        return _json(ticket)

    async def forget_refunds(request: Request) -> Response:
        forgotten = state.forget_refunds(request.path_params["payment_reference"])
        return _json({"forgotten": forgotten})

    async def unvoid_receipt(request: Request) -> Response:
        ticket_id = request.path_params["ticket_id"]
        receipt = state.unvoid_receipt(ticket_id)
        if receipt is None:
            return _json({"error": f"no receipt for ticket {ticket_id}"}, 404)
        return _json(receipt)

    async def unknown(request: Request) -> Response:
        return _json({"error": f"no control {request.scope['path']}"}, 404)

    p = SIM_PREFIX
    return [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/calls", calls, methods=["GET"]),
        Route(f"{p}/flights/{{flight_id}}", get_flight, methods=["GET"]),
        Route(f"{p}/flights/{{flight_id}}", put_flight, methods=["PUT"]),
        Route(f"{p}/shows/{{event_id}}", get_show, methods=["GET"]),
        Route(f"{p}/shows/{{event_id}}", put_show, methods=["PUT"]),
        Route(f"{p}/faults", add_fault, methods=["POST"]),
        Route(f"{p}/faults", list_faults, methods=["GET"]),
        Route(f"{p}/faults", clear_faults, methods=["DELETE"]),
        Route(f"{p}/quota", list_quotas, methods=["GET"]),
        Route(f"{p}/quota", put_quota, methods=["PUT"]),
        Route(f"{p}/quota", clear_quotas, methods=["DELETE"]),
        Route(f"{p}/reset", reset, methods=["POST"]),
        Route(f"{p}/latency", get_latency, methods=["GET"]),
        Route(f"{p}/latency", put_latency, methods=["PUT"]),
        Route(f"{p}/flight-tickets", flight_tickets, methods=["GET"]),
        Route(f"{p}/refunds", refunds, methods=["GET"]),
        Route(f"{p}/receipts", receipts, methods=["GET"]),
        Route(f"{p}/flight-tickets/{{ticket_id}}/revive", revive_flight_ticket, methods=["POST"]),
        Route(f"{p}/refunds/{{payment_reference}}", forget_refunds, methods=["DELETE"]),
        Route(f"{p}/receipts/{{ticket_id}}/unvoid", unvoid_receipt, methods=["POST"]),
        Route(f"{p}/{{rest:path}}", unknown, methods=ALL_METHODS),
    ]


def create_app(
    *,
    latency_ms: int = 0,
    jitter_ms: int = 0,
    max_calls: int = DEFAULT_MAX_CALLS,
    default_seats: int = DEFAULT_SEATS,
) -> Starlette:
    """Build the simulator app; its state is `app.state.simulator` (a `SimulatorState`)."""
    state = SimulatorState(
        default_seats=default_seats,
        max_calls=max_calls,
        initial_latency_ms=latency_ms,
        initial_jitter_ms=jitter_ms,
    )
    # Partner routes first (the hot path is matched in order); the catch-all last, so unknown
    # partner paths are answered 404 through the wrapper and still show in the call log.
    catch_all = Route("/{path:path}", _partner(state, _not_found), methods=ALL_METHODS)
    app = Starlette(routes=[*_partner_routes(state), *_sim_routes(state), catch_all])
    app.state.simulator = state
    return app

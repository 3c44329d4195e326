"""The peer: the same bundle booked with celery-saga 0.1.1, used as its README teaches.

celery-saga (PyPI, the closest public project: Celery chains with `link_error` compensation,
state in Redis) runs each step as a Celery task decorated with `@saga_step(compensate=...)`,
returning a `StepResponse` whose `compensation_data` its undo task receives; transient partner
faults are retried in-process with tenacity (its README leaves retries to the step). The steps
make the saga's partner calls with the saga's bodies and idempotency keys, against the same
simulator: book the show, the inbound flight, the return flight; undo: refund and void each
show ticket, cancel each flight ticket. A last step (no compensation) appends the flow's id to
a stream, as the bare chain's last task does, so the driver learns it finished by XREAD.

Loaded only by the benchmark's worker (CELERY_WORKER_INCLUDE, bench/stack.py); without
celery-saga installed (it is in the `dev` extra) it registers nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from functools import cache
from typing import Any

import httpx
from celery.signals import worker_init
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from adapters.settings import get_settings
from tasks.celery_app import app, redis_client

try:
    from celery_saga import Saga, StepResponse, saga_step, set_default_backend
    from celery_saga.backends import RedisSagaBackend
except ImportError:  # not installed: the other sides still run
    Saga = None  # type: ignore[assignment,misc]

NAMESPACE = uuid.UUID("0c9d9a52-6a0e-4b52-8a70-2a9d4a0b1e55")  # as bench/baseline_tasks.py


class Transient(Exception):
    """A 5xx: retried by tenacity, as are connection errors and timeouts."""


def done_stream() -> str:
    return f"{get_settings().key_prefix}bench:peer-done"


@cache
def http() -> httpx.Client:
    s = get_settings()
    return httpx.Client(base_url=s.gateway_url, timeout=s.http_timeout_s)


@retry(
    retry=retry_if_exception_type((Transient, httpx.TransportError)),
    stop=stop_after_attempt(5),
    wait=wait_exponential_jitter(initial=0.05, max=2.0, jitter=0.1),
    reraise=True,
)
def call(method: str, path: str, body: dict[str, Any] | None, key: str | None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    reply = http().request(method, path, json=body, headers=headers)
    if reply.status_code >= 500:
        raise Transient(f"{method} {path}: {reply.status_code}")
    if reply.status_code == 409:
        raise RuntimeError(f"{method} {path}: refused (409)")  # fails the step: compensation
    reply.raise_for_status()
    return reply.json() if reply.content else None


def _flight(flow_id: str, leg: str, flight_id: str) -> list[str]:
    body = {
        "customer_email": "bench@example.com",
        "flight_id": flight_id,
        "passenger_names": ["Ann Lee", "Bob Lee"],
        "reference_id": flow_id,
        "idempotency_key": f"{flow_id}:flight-{leg}",
    }
    reply = call("PUT", "/transportation-api/flight-tickets", body, body["idempotency_key"])
    return list(reply["ticket_ids"])


if Saga is not None:
    set_default_backend(RedisSagaBackend(url=get_settings().redis_url))

    if os.environ.get("BENCH_PEER_CELERY_DEFAULTS"):
        # The peer on Celery's own delivery defaults, as its README's app would run it: a
        # message acked when a worker takes it (this app acks after the task ran, and
        # requeues it if the worker dies: celeryconfig.py). bench/ledger.py --peer-defaults.
        @worker_init.connect
        def _acks_early(**_: Any) -> None:
            for name, task in app.tasks.items():
                if name.startswith(("celery_saga.", "bench.peer.")):
                    task.acks_late = False
                    task.reject_on_worker_lost = False

    @app.task(name="bench.peer.refund_show", ignore_result=True)
    def refund_show(compensation_data: dict[str, Any]) -> None:
        flow_id = compensation_data["flow_id"]
        for t in compensation_data["ticket_ids"]:
            reason = "VIP bundle rolled back"
            refund = {
                "payment_reference": t,
                "reason": reason,
                "deduplication_id": f"{flow_id}:r:{t}",
            }
            call("PUT", "/payments-api/refunds", refund, refund["deduplication_id"])
            void = {"ticket_id": t, "reason": reason, "idempotent_id": f"{flow_id}:v:{t}"}
            call("PUT", "/receipts-api/void-receipt", void, void["idempotent_id"])

    @app.task(name="bench.peer.cancel_flight", ignore_result=True)
    def cancel_flight(compensation_data: dict[str, Any]) -> None:
        for t in compensation_data["ticket_ids"]:
            call("DELETE", f"/transportation-api/flight-tickets/{t}", None, None)

    @saga_step(compensate=refund_show)
    @app.task(name="bench.peer.book_show")
    def book_show(flow_id: str, show_id: str, **_: Any) -> StepResponse:
        body = {
            "booking_id": str(uuid.uuid5(NAMESPACE, flow_id)),
            "customer_address": "bench@example.com",
            "event_id": show_id,
            "number_of_tickets": 2,
        }
        ids = call("POST", "/dead-nation-api/ticket/booking", body, body["booking_id"])[
            "ticket_ids"
        ]
        return StepResponse(
            output={"show_tickets": ids}, compensation_data={"flow_id": flow_id, "ticket_ids": ids}
        )

    @saga_step(compensate=cancel_flight)
    @app.task(name="bench.peer.book_inbound")
    def book_inbound(flow_id: str, inbound_id: str, **_: Any) -> StepResponse:
        ids = _flight(flow_id, "inbound", inbound_id)
        return StepResponse(output={"inbound_tickets": ids}, compensation_data={"ticket_ids": ids})

    @saga_step(compensate=cancel_flight)
    @app.task(name="bench.peer.book_return")
    def book_return(flow_id: str, return_id: str, **_: Any) -> StepResponse:
        ids = _flight(flow_id, "return", return_id)
        return StepResponse(output={"return_tickets": ids}, compensation_data={"ticket_ids": ids})

    @saga_step(no_compensation=True)
    @app.task(name="bench.peer.done")
    def done(flow_id: str, **_: Any) -> dict[str, Any]:
        redis_client().xadd(done_stream(), {"chain_id": flow_id, "at": repr(time.time())})
        return {}

    BUNDLE = (
        Saga("vip_bundle")
        .add_step(book_show)
        .add_step(book_inbound)
        .add_step(book_return)
        .add_step(done, no_compensation=True)
    )

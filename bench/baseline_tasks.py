"""The baseline: a bare Celery chain that makes the same partner calls as a successful bundle.

Three tasks (POST the show booking, PUT the inbound flight, PUT the return flight, each with
its idempotency key in the body and the `Idempotency-Key` header, through the same partner
client and retry policy as the saga, less the fleet's partner gate) and one task that appends
to a Redis stream, as the saga appends its events. No state, no checks, no error callbacks:
what Celery alone costs.

Registered on the production app (same broker, serializer, acks, events and routing) but loaded
only by the benchmark's worker (CELERY_WORKER_INCLUDE=bench.baseline_tasks), never by `-A tasks`
alone. `ignore_result=True` as on the saga's steps, so both pay the same for results.
"""

from __future__ import annotations

import time
import uuid
from functools import cache

from celery import chain
from celery.canvas import Signature

from adapters.partners import Partners
from adapters.settings import get_settings
from tasks.celery_app import app, partner_tls, redis_client

STEPS = 4  # as many tasks as a successful bundle: intake, show, inbound, return (+ finalize)
NAMESPACE = uuid.UUID("0c9d9a52-6a0e-4b52-8a70-2a9d4a0b1e55")


def done_stream() -> str:
    """Where the last task of each chain appends `chain_id` (the driver XREADs it)."""
    return f"{get_settings().key_prefix}bench:baseline-done"


@cache
def partners() -> Partners:
    """The saga's partner client and retry policy, without the fleet's partner gate: a bare
    chain knows nothing of back-pressure, so what the gate costs shows in the ratios."""
    s = get_settings()
    return Partners(
        s.gateway_url,
        s.http_timeout_s,
        s.http_retry_attempts,
        s.http_retry_max_wait_s,
        deadline_s=s.http_call_deadline_s,
        verify=partner_tls(),
    )


def book_show(flow_id: str, show_id: str) -> None:
    """The show booking of a successful bundle (also the floor's: bench/floor_tasks.py)."""
    partners().book_show_tickets(
        booking_id=str(uuid.uuid5(NAMESPACE, flow_id)),
        customer_address="bench@example.com",
        event_id=show_id,
        number_of_tickets=2,
        correlation_id=flow_id,
    )


def book_flight(flow_id: str, leg: str, flight_id: str) -> None:
    """One leg's booking of a successful bundle (also the floor's)."""
    partners().book_flight(
        customer_email="bench@example.com",
        flight_id=flight_id,
        passenger_names=["Ann Lee", "Bob Lee"],
        reference_id=flow_id,
        idempotency_key=f"{flow_id}:flight-{leg}",
        correlation_id=flow_id,
    )


@app.task(name="bench.baseline.show", ignore_result=True)
def show(chain_id: str, show_id: str) -> None:
    book_show(chain_id, show_id)


@app.task(name="bench.baseline.flight", ignore_result=True)
def flight(chain_id: str, leg: str, flight_id: str) -> None:
    book_flight(chain_id, leg, flight_id)


@app.task(name="bench.baseline.done", ignore_result=True)
def done(chain_id: str) -> None:
    redis_client().xadd(done_stream(), {"chain_id": chain_id, "at": repr(time.time())})


def baseline_chain(chain_id: str, show_id: str, inbound_id: str, return_id: str) -> Signature:
    return chain(
        show.si(chain_id, show_id),
        flight.si(chain_id, "inbound", inbound_id),
        flight.si(chain_id, "return", return_id),
        done.si(chain_id),
    )

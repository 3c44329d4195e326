"""The baseline: a bare Celery chain of no-op tasks that make one partner GET each.

Registered on the production app (same broker, serializer, acks, events and routing) but loaded
only by the benchmark's worker (CELERY_WORKER_INCLUDE=bench.baseline_tasks), never by `-A tasks`
alone. `ignore_result=True` as on the saga's forward steps, so both pay the same for results.
"""

from __future__ import annotations

import time

from celery import chain
from celery.canvas import Signature

from adapters.settings import get_settings
from tasks.celery_app import app, partners, redis_client

STEPS = 4  # as many tasks as a successful bundle's chain: show, inbound, return, finalize


def done_key() -> str:
    """Where the last task of each chain reports `<chain id> <finish time>`."""
    return f"{get_settings().key_prefix}bench:baseline-done"


@app.task(name="bench.baseline.step", ignore_result=True)
def step(chain_id: str) -> None:
    # The same client, retries and routing as a saga step; a GET the simulator answers with [].
    partners().flight_tickets(reference_id=chain_id)


@app.task(name="bench.baseline.last", ignore_result=True)
def last(chain_id: str) -> None:
    step(chain_id)
    redis_client().rpush(done_key(), f"{chain_id} {time.time()}")


def baseline_chain(chain_id: str) -> Signature:
    return chain(*[step.si(chain_id) for _ in range(STEPS - 1)], last.si(chain_id))

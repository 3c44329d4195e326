"""The canvas tier: Celery's own in-process worker (celery.contrib.pytest's `celery_app` and
`celery_worker`, which pytest-celery ships) running the real tasks against the real Redis and
the partner simulator. Fast (no process to start), for the wiring: chain order, the error
callback on every step, the hand-off to the process manager.

pytest-celery 1.x replaces `celery_worker` with a Docker-built worker, which these machines
cannot run; here it is the in-process one again, built exactly as celery.contrib.pytest builds
it (`start_worker` in a thread), around the production app instead of a throwaway TestApp so
that the tasks under test are the ones `celery -A tasks worker` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing import tasks as _ping  # noqa: F401  (registers celery.ping)
from celery.contrib.testing.worker import TestWorkController, start_worker

from partner_simulator.server import SimulatorServer


@pytest.fixture(scope="module")
def celery_app(redis_url: str, simulator: SimulatorServer) -> Celery:
    from tasks import app

    return app


@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Celery, celery_worker_pool: str, celery_worker_parameters: dict[str, Any]
) -> Iterator[TestWorkController]:
    with start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"  # the undo group runs in parallel, as on a prefork pool


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # Every queue of the app: intake, booking steps and compensations.
    return {
        "concurrency": 4,
        "queues": ["vip-bundles", "vip-bundles.booking", "vip-bundles.compensation"],
    }

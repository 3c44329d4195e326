"""Test set-up: a real Redis, the partner simulator over HTTP, real `celery worker` processes.

Every run gets its own key prefix (our keys, the broker's queues and the result backend's keys
all carry it), so runs never see each other's messages, and the prefix is deleted at the end.
"""

from __future__ import annotations

import os
import uuid

# Before anything imports celeryconfig: settings are read once per process.
RUN_PREFIX = f"vip-bundles-test-{uuid.uuid4().hex[:8]}:"
os.environ["KEY_PREFIX"] = RUN_PREFIX
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
# Quick retries and short timeouts, so fault scenarios take seconds, not minutes.
os.environ.setdefault("HTTP_TIMEOUT_S", "2")
os.environ.setdefault("HTTP_RETRY_ATTEMPTS", "4")
os.environ.setdefault("HTTP_RETRY_MAX_WAIT_S", "0.05")
os.environ.setdefault("COMPENSATION_RETRY_ATTEMPTS", "3")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from partner_simulator.server import SimulatorClient, SimulatorServer  # noqa: E402
from tests.helpers import Saga  # noqa: E402
from vip_bundles import local_stack  # noqa: E402


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ["REDIS_URL"]
    if not local_stack.redis_answers(url):
        pytest.exit(f"no Redis at {url}: start one (see .ci/run) or set REDIS_URL", 2)
    yield url
    from tasks.celery_app import redis_client

    client = redis_client()
    for key in client.scan_iter(match=f"{RUN_PREFIX}*", count=1000):
        client.delete(key)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def sim(simulator: SimulatorServer) -> Iterator[SimulatorClient]:
    client = simulator.client()
    client.clear_faults()
    client.set_latency(0)
    yield client
    client.clear_faults()
    client.set_latency(0)
    client.close()


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker_env(redis_url: str, simulator: SimulatorServer) -> dict[str, str]:
    return local_stack.celery_env(REDIS_URL=redis_url, GATEWAY_URL=simulator.url)


@pytest.fixture(scope="session")
def worker(worker_env: dict[str, str], logdir: Path) -> Iterator[local_stack.Worker]:
    """One real worker process (prefork) for the whole session, on every queue."""
    w = local_stack.start_worker(worker_env, name="session@localhost", logdir=logdir)
    yield w
    w.stop()


@pytest.fixture
def saga(worker: local_stack.Worker, sim: SimulatorClient) -> Saga:
    return Saga(sim)

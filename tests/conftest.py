"""Test set-up: a real Redis, the partner simulator over HTTP, real `celery worker` processes.

Every run gets a Redis database number of its own, as two installations sharing one Redis do
(shared/intake-api.md): the broker's queues, the results, the bundles and the events stream
all keep the product's default names, so what a test sends is what a real caller sends. The
database is emptied at the end.
"""

from __future__ import annotations

import atexit
import os

import pytest

from tests.needs import missing
from vip_bundles import local_stack

# The Redis server the tests use (TEST_REDIS_URL, else REDIS_URL's server, else the local one).
SERVER_URL = local_stack.server_url_of(
    os.environ.get("TEST_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
)
if not local_stack.redis_answers(SERVER_URL):
    pytest.exit(f"no Redis at {SERVER_URL}: start one (see .ci/run) or set TEST_REDIS_URL", 2)
RUN_DB = local_stack.claim_database(SERVER_URL)
atexit.register(RUN_DB.release)
# Before anything imports celeryconfig: settings are read once per process. Everything else
# (KEY_PREFIX, queue names) stays at the product's defaults.
os.environ["REDIS_URL"] = RUN_DB.url
os.environ.pop("KEY_PREFIX", None)
# The archive (PostgreSQL): a database of its own per run, dropped at the end. Every process of
# the run (workers, doors) archives there; retention stays at its default (7 days), so nothing
# is archived unless a test moves the clock (CLOCK_OFFSET_S) or calls the archiver.
from tests import archive_db  # noqa: E402

os.environ.pop("CLOCK_OFFSET_S", None)
ARCHIVE_URL = archive_db.claim(RUN_DB.db)
if ARCHIVE_URL is not None:
    os.environ["ARCHIVE_URL"] = ARCHIVE_URL
    atexit.register(archive_db.drop, ARCHIVE_URL)
else:
    os.environ.pop("ARCHIVE_URL", None)
# The session's partner simulator listens here, so that this process's settings (read once)
# point at it too: the in-process worker of tests/canvas calls the partners from here.
SIMULATOR_PORT = local_stack.free_port()
os.environ["GATEWAY_URL"] = f"http://127.0.0.1:{SIMULATOR_PORT}"
# Quick retries and short timeouts, so fault scenarios take seconds, not minutes.
os.environ.setdefault("HTTP_TIMEOUT_S", "2")
os.environ.setdefault("HTTP_RETRY_ATTEMPTS", "4")
os.environ.setdefault("HTTP_RETRY_MAX_WAIT_S", "0.05")
os.environ.setdefault("COMPENSATION_RETRY_ATTEMPTS", "3")
# A partner's circuit, once open, is probed at least every 2 s (not 10 s).
os.environ.setdefault("PARTNER_BREAKER_MAX_OPEN_S", "2")

from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from partner_simulator.server import SimulatorClient, SimulatorServer  # noqa: E402
from tests.helpers import Saga  # noqa: E402


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    yield RUN_DB.url
    RUN_DB.release()


@pytest.fixture(scope="session")
def archive_url() -> str:
    """The run's archive database, its tables created (skips without a PostgreSQL)."""
    if ARCHIVE_URL is None:
        missing("no PostgreSQL at 127.0.0.1:5432 for the archive (see .ci/run)")
    return ARCHIVE_URL


@contextmanager
def database_claims() -> Iterator[Callable[[], str]]:
    """`claim()` inside: another database of its own each time, all released on leaving."""
    claimed: list[local_stack.ClaimedDatabase] = []

    def claim() -> str:
        claimed.append(local_stack.claim_database(SERVER_URL))
        return claimed[-1].url

    try:
        yield claim
    finally:
        for db in claimed:
            db.release()


@pytest.fixture
def claim_db() -> Iterator[Callable[[], str]]:
    """`claim_db()`: another database of its own (for a second stack: the demo, a scenario)."""
    with database_claims() as claim:
        yield claim


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(port=SIMULATOR_PORT) as server:
        yield server


@pytest.fixture
def sim(simulator: SimulatorServer) -> Iterator[SimulatorClient]:
    client = simulator.client()
    client.clear_faults()
    client.set_latency(0)
    forget_partner_states()
    yield client
    client.clear_faults()
    client.clear_quota()
    client.set_latency(0)
    client.close()
    forget_partner_states()


def forget_partner_states() -> None:
    """Each test meets healthy partners: what the fleet learned of them in an earlier test
    (an open circuit, a Retry-After) is the partners' state, reset with their faults."""
    from adapters.partner_gate import PARTNER_PREFIXES
    from tasks.celery_app import partner_gate, redis_client

    redis_client().delete(*(partner_gate().key(p) for p in PARTNER_PREFIXES))


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

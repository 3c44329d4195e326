"""Fixtures of the reliability suite: a private stack per scenario, and recording its figures."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SERVER_URL
from tests.reliability import results
from tests.reliability.invariants import Report
from tests.reliability.stack import Stack, suffix
from vip_bundles import local_stack


@pytest.fixture
def worker_pool() -> str:
    """The workers' pool of a scenario (`-P`): prefork unless the module parametrizes it."""
    return "prefork"


@pytest.fixture
def make_stack(redis_url: str, logdir: Path, worker_pool: str) -> Iterator[Callable[..., Stack]]:
    """`make_stack(name, url=..., **worker_env)`: a Stack closed after the test, on a database
    of its own on the test Redis (or on the Redis at `url`, a private server), its workers on
    `worker_pool`."""
    stacks: list[Stack] = []

    def make(name: str, url: str | None = None, **env: str) -> Stack:
        name += suffix(worker_pool)
        if url is None:
            db = local_stack.claim_database(SERVER_URL)
            stack = Stack(name, db.url, logdir, release=db.release, pool=worker_pool, **env)
        else:
            stack = Stack(name, url, logdir, pool=worker_pool, **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in reversed(stacks):
        stack.close()


@pytest.fixture
def private_redis() -> Iterator[str]:
    """The URL of a `redis-server` of the scenario's own. Ask for it before `make_stack` (so it
    stops after the stack's workers): a database claimed on the shared test Redis is only as
    private as every other run's claim logic (a benchmark's messages were once seen there, and
    the database emptied mid-scenario)."""
    server = local_stack.start_redis_server()
    yield server.url
    server.stop()


@pytest.fixture
def record(request: pytest.FixtureRequest, worker_pool: str) -> Callable[..., None]:
    """`record(key, title, report, faults=[...], **figures)`: keep the scenario's figures
    (under `key-threads`, titled "... (-P threads)", when its workers ran on threads)."""
    started = time.monotonic()

    def save(key: str, title: str, report: Report, faults: list[str], **figures: Any) -> None:
        if worker_pool != "prefork":
            key, title = key + suffix(worker_pool), f"{title} (-P {worker_pool})"
        results.record(
            key,
            title=title,
            pool=worker_pool,
            faults=faults,
            counts=report.as_dict(),
            violations=report.violations[:20],
            figures=figures,
            duration_s=round(time.monotonic() - started, 1),
            command=f'.venv/bin/pytest -m slow "{request.node.nodeid}"',
        )

    return save

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
from tests.reliability.stack import Stack
from vip_bundles import local_stack


@pytest.fixture
def make_stack(redis_url: str, logdir: Path) -> Iterator[Callable[..., Stack]]:
    """`make_stack(name, url=..., **worker_env)`: a Stack closed after the test, on a database
    of its own on the test Redis (or on the Redis at `url`, a private server)."""
    stacks: list[Stack] = []

    def make(name: str, url: str | None = None, **env: str) -> Stack:
        if url is None:
            db = local_stack.claim_database(SERVER_URL)
            stack = Stack(name, db.url, logdir, release=db.release, **env)
        else:
            stack = Stack(name, url, logdir, **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in reversed(stacks):
        stack.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`record(key, title, report, faults=[...], **figures)`: keep the scenario's figures."""
    started = time.monotonic()

    def save(key: str, title: str, report: Report, faults: list[str], **figures: Any) -> None:
        results.record(
            key,
            title=title,
            faults=faults,
            counts=report.as_dict(),
            violations=report.violations[:20],
            figures=figures,
            duration_s=round(time.monotonic() - started, 1),
            command=f'.venv/bin/pytest -m slow "{request.node.nodeid}"',
        )

    return save

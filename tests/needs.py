"""What a test needs from the machine (a service, a tool), and what happens when it is missing.

On a developer's machine a missing RabbitMQ, Chromium or promtool skips the tests that need
it, saying how to get it. In CI (the `CI` environment variable set, as `.ci/run` and every CI
service set it) nothing may be skipped quietly: the same absence fails the test, so that a
green CI run means every suite ran, on both brokers.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing(what: str) -> NoReturn:
    """Skip the test for want of `what` (say how to get it); fail it instead in CI."""
    if in_ci():
        pytest.fail(f"{what} (CI is set: a missing service or tool fails the run)", pytrace=False)
    pytest.skip(what)

"""A RabbitMQ vhost of a test's own, as deployments sharing a RabbitMQ are told apart."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@contextmanager
def own_vhost(prefix: str) -> Iterator[str | None]:
    """The broker URL of a new vhost (deleted afterwards); None without `rabbitmqctl`."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    try:
        for args in (
            ["add_vhost", name],
            ["set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(
                ["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60
            )
    except (OSError, subprocess.SubprocessError):
        yield None
        return
    try:
        yield f"{AMQP_URL.rstrip('/')}/{name}"
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], capture_output=True, timeout=60)

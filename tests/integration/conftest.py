"""The store tier: the Redis store (and what sits on it) against the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from adapters.store import BundleStore


@pytest.fixture
def store(redis_url: str) -> Iterator[BundleStore]:
    """A store of its own: a fresh KEY_PREFIX in the run's database, deleted afterwards."""
    prefix = f"vip-bundles-store-test-{uuid.uuid4().hex[:8]}:"
    client = Redis.from_url(redis_url)
    yield BundleStore(client, prefix=prefix)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()

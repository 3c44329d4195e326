"""What the back-pressure scenarios (issue 24) measure, from what the partners saw and Redis holds.

The simulator's call log stamps every call with the wall clock (`at`, `time.time()` on this
machine), so a scenario's own `time.time()` marks (first send, fault cleared) and the bundles'
history timestamps are on the same clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from adapters.deferred import KINDS, DeferredSteps
from adapters.partner_gate import PARTNER_PREFIXES
from adapters.settings import Settings
from process_manager.bundle import Bundle
from tests.reliability.stack import Stack

FLIGHTS = "/transportation-api"
PAYMENTS = "/payments-api"
# The worker line: `celery worker -P threads -c 16` (plus beat). The pool the README
# recommends for partner I/O, where a deferred step must not be a sleeping thread.
THREADS = 16
ON_THREADS = pytest.mark.parametrize("worker_pool", ["threads"])


def deferred(st: Stack) -> DeferredSteps:
    """The scenario's delayed queues, as its workers name them (the default key prefix)."""
    return DeferredSteps(st.redis, Settings().key_prefix)


def waiting(st: Stack) -> int:
    """Bundles in any partner's delayed queue (not counting those leased by a releaser)."""
    return sum(deferred(st).counts(PARTNER_PREFIXES).values())


def leased(st: Stack) -> int:
    """Bundles a releaser has taken and not yet sent on (its lease runs for LEASE_S)."""
    d = deferred(st)
    return sum(
        int(st.redis.zcard(f"{d.key(p, k)}:leased")) for p in PARTNER_PREFIXES for k in KINDS
    )


def between(calls: Iterable[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [c for c in calls if start <= c["at"] < end]


def per_bundle(calls: Iterable[dict[str, Any]]) -> Counter[str]:
    """Flight calls per bundle (the airline's request names the bundle as `reference_id`)."""
    return Counter(
        str(c["body"]["reference_id"])
        for c in calls
        if isinstance(c.get("body"), dict) and "reference_id" in c["body"]
    )


def per_second(calls: Iterable[dict[str, Any]], start: float) -> list[int]:
    """Calls in each whole second from `start` (index 0: the first second)."""
    seconds = Counter(int(c["at"] - start) for c in calls if c["at"] >= start)
    return [seconds.get(s, 0) for s in range(max(seconds, default=-1) + 1)]


def settled_at(bundle: Bundle) -> float:
    """When the bundle's last transition was written (wall clock, seconds)."""
    return bundle.history[-1].at.timestamp() if bundle.history else bundle.updated_at.timestamp()


def settle_seconds(st: Stack, ids: Iterable[str], since: float) -> list[float]:
    return sorted(round(settled_at(st.bundle(i)) - since, 1) for i in ids)

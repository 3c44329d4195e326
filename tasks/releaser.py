"""Every worker releases the steps that waited on a partner once it is due (tasks/deferral.py).

A thread of the worker's main process (a Celery bootstep, so `celery worker` runs it with no
flag) takes due bundles from the partners' delayed queues a few at a time: undos first, then
forward steps; with a quota, about what the quota lets through in one tick, so a partner that
comes back is not met by every waiting step at once. Each bundle is taken up from its stored
state (`take_up`, as the reconciler does: the rest of its chain, its pending undos, or, for a
bundle parked while its partner was down, its resume).
Every worker runs it; the queues' leases keep two of them from releasing the same bundle.
"""

from __future__ import annotations

import logging
import math
import threading
from functools import cache
from typing import Any

from celery import bootsteps
from redis import RedisError

from adapters.deferred import KINDS
from adapters.partner_gate import PARTNER_PREFIXES
from adapters.settings import get_settings
from process_manager.bundle import FINAL
from tasks.celery_app import app, deferred_steps, store
from tasks.take_up import take_up

log = logging.getLogger(__name__)

TICK_S = 0.2
PER_TICK_WITHOUT_QUOTA = 50


@cache
def per_tick(partner: str) -> int:
    """How many of a partner's waiting bundles one tick takes: about what its quota lets
    through in a tick (settings are read once per process, so this is too)."""
    rate = get_settings().rate_limits.get(partner)
    return PER_TICK_WITHOUT_QUOTA if rate is None else max(1, math.ceil(rate * TICK_S))


def release_due() -> int:
    """One round over every partner's delayed queues; how many bundles were taken up."""
    deferred, released = deferred_steps(), 0
    for partner in PARTNER_PREFIXES:
        budget = per_tick(partner)
        for kind in KINDS:
            if budget <= 0:
                break
            for bundle_id in deferred.take_due(partner, kind, budget):
                budget -= 1
                bundle = store().get(bundle_id)
                if bundle is not None and bundle.status not in FINAL:
                    take_up(bundle)  # a parked one resumes
                # Only once sent: if sending failed, the lease runs out and it comes back.
                deferred.released(partner, kind, bundle_id)
                released += 1
    return released


class DeferredReleaser(bootsteps.StartStopStep):
    """Runs `release_due` every `TICK_S` in the worker's main process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vip-bundles-releaser", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                release_due()  # one round a tick: that is the pacing
            except (RedisError, OSError) as exc:  # Redis or the broker away: next tick
                log.warning("releasing deferred steps: %s", exc)


app.steps["worker"].add(DeferredReleaser)

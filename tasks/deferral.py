"""A step its partner turned away waits as a scheduled entry, not in a sleeping thread.

When the fleet's partner gate says "not yet" (a `Retry-After`, an open circuit, the quota) the
step's bundle goes into the partner's delayed queue (adapters/deferred.py) and the task ends
quietly (`Ignore`: acked, the rest of its chain not sent). The releaser (tasks/releaser.py)
takes the bundle up again from its stored state when the partner is due. The wait burns no
attempt: the step's start is taken back unless an earlier try may have reached the partner.

A forward step never waits past its bundle's booking deadline: it comes back at the deadline
and gives up then (`due` in tasks/steps.py), so the bundle rolls back saying why.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from celery.exceptions import Ignore

from adapters.metrics import METER, PARTNER_OF_PATH
from adapters.partners import PartnerBusy
from adapters.settings import get_settings
from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import Command
from tasks.celery_app import deferred_steps, store
from tasks.steps import log

_JITTER = random.Random()


def spread(wait_s: float) -> float:
    """The wait plus up to a quarter of it (at most 2 s) at random: bundles turned away
    together do not all come back in the same instant."""
    return wait_s + _JITTER.uniform(0, min(max(wait_s * 0.25, 0.05), 2.0))


def deadline_in(bundle: Bundle, now: float | None = None) -> float:
    """Seconds left until the bundle's booking deadline (negative once it passed)."""
    deadline = bundle.created_at.timestamp() + get_settings().booking_deadline_s
    return deadline - (time.time() if now is None else now)


def defer(
    bundle: Bundle, commands: Sequence[Command], busy: PartnerBusy, *, undo: bool
) -> NoReturn:
    """Put `bundle` in `busy.partner`'s delayed queue and end the task that ran `commands`."""
    if not busy.maybe_processed:
        store().forget_starts(bundle.vip_bundle_id, [saga.start_key(bundle, c) for c in commands])
    wait_s = busy.wait_s
    if busy.reason == "half_open":
        # A probe is in flight and its answer may close the circuit within one call: look again
        # after the breaker's first interval, not the whole next one (up to its 10 s cap), which
        # nothing would cut short once the probe succeeds.
        wait_s = min(wait_s, get_settings().partner_breaker_open_s)
    wait = spread(wait_s)
    if not undo:
        wait = max(min(wait, deadline_in(bundle)), 0.0)  # then it gives up, at the deadline
    deferred_steps().defer(bundle.vip_bundle_id, busy.partner, undo=undo, wait_s=wait)
    METER.partner_wait(PARTNER_OF_PATH.get(busy.partner, busy.partner), busy.reason, wait)
    name = type(commands[0]).__name__
    log.info("%s for %s waits %.2f s on %s", name, bundle.vip_bundle_id, wait, busy)
    raise Ignore()


@contextmanager
def deferring(bundle: Bundle, *commands: Command, undo: bool = False) -> Iterator[None]:
    """Around a step's partner calls: a `PartnerBusy` defers the step (see `defer`)."""
    try:
        yield
    except PartnerBusy as busy:
        defer(bundle, commands, busy, undo=undo)


def retry_later(bundle_id: str, partner: str, failures: int) -> None:
    """A forward step that failed for a technical reason comes back after a backoff that
    doubles with its failures (1 s, 2 s, ... 60 s), not after the reconciler's round."""
    deferred_steps().defer(
        bundle_id, partner, undo=False, wait_s=spread(min(2.0 ** max(failures - 1, 0), 60.0))
    )

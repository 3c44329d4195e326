"""What a worker does with what a newer release wrote: leave it, say so, let a newer worker take it.

Every task message this release sends carries its schema version in a message header
(`vip_schema`), not in the task's arguments: the signatures stay what the previous release
calls and accepts, and a release that knows no versions ignores a header it does not read.
A message without the header is version 1 (the previous release, or an outside caller).

A task whose message, bundle document or event is of a newer version than this release knows
(`versions.NewerSchema`) changes nothing: the same message is sent again with a countdown,
for whichever worker fetches it next (during a rolling deploy, soon a newer one), and this
one acks its copy. Not `Reject(requeue=True)`, which hands it straight back to the queue (a
busy loop while only old workers run), nor `retry()`, whose retry count would run out and
drop the message: a deferral does not count as a retry. The countdown stays well inside the
broker's visibility timeout: on Redis a worker holds a message with an ETA unacked until then.
Each bundle is reported once (a warning and a metric), however often its messages come by.
"""

from __future__ import annotations

import random
from typing import Any

from celery import Task
from celery.exceptions import Retry
from celery.signals import before_task_publish
from celery.utils.log import get_task_logger

from adapters.metrics import METER
from adapters.settings import get_settings
from process_manager import versions
from process_manager.versions import NewerSchema

log = get_task_logger(__name__)

DEFER_MAX_S = 30.0
NOTED_TTL_S = 24 * 3600  # a bundle's "met a newer version" is reported again after a day


@before_task_publish.connect
def _stamp_version(headers: dict[str, Any] | None = None, **_: object) -> None:
    # `setdefault`: a deferred message keeps the (newer) version it came with.
    if headers is not None:
        headers.setdefault(versions.MESSAGE_HEADER, versions.MESSAGE)


def defer_s(visibility_timeout_s: float) -> float:
    """How long a deferred message waits: up to DEFER_MAX_S, with jitter, and never more than
    a quarter of the visibility timeout (else Redis would hand it to a second worker)."""
    return min(DEFER_MAX_S, visibility_timeout_s / 4) * random.uniform(0.5, 1.0)


def bundle_id_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The bundle a task message is about: its first argument (the steps), `vip_bundle_id`
    (the doors' bodies), or the event's payload (the process manager)."""
    first = args[0] if args else None
    if isinstance(first, str):
        return first
    if isinstance(kwargs.get("vip_bundle_id"), str):
        return str(kwargs["vip_bundle_id"])
    if isinstance(first, dict) and isinstance(first.get("payload"), dict):
        found = first["payload"].get("vip_bundle_id")
        return found if isinstance(found, str) else None
    return None


def note_newer(exc: NewerSchema, subject: str | None) -> None:
    """Say once per bundle (or message) that it waits for a newer release: a warning and
    `vip_bundles_newer_schema_total`. Never fails the caller."""
    from tasks.celery_app import redis_client  # the app imports this module first

    key = f"{get_settings().key_prefix}newer-schema:{subject or 'unknown'}"
    try:
        first = bool(redis_client().set(key, versions.RELEASE, nx=True, ex=NOTED_TTL_S))
    except Exception:  # reporting must not decide the message's fate
        first = True
    if first:
        log.warning("%s", exc)
        METER.newer_schema(exc.what)


class SchemaGuardedTask(Task):
    """The base of every task: checks the message's schema version first, and defers what a
    newer release wrote (above) instead of running or failing it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:  # a plain call, or an error callback run inline
            return super().__call__(*args, **kwargs)
        try:
            header = getattr(request, versions.MESSAGE_HEADER, None)
            if header is None and request.headers:
                header = request.headers.get(versions.MESSAGE_HEADER)
            versions.check("task message", header, versions.MESSAGE, bundle_id_of(args, kwargs))
            # The worker pushed this message's request already: run the body under it.
            return self.run(*args, **kwargs)
        except NewerSchema as exc:
            raise self._defer(exc, bundle_id_of(args, kwargs) or request.id) from None

    def _defer(self, exc: NewerSchema, subject: str | None) -> Retry:
        note_newer(exc, exc.bundle_id or subject)
        wait = defer_s(get_settings().visibility_timeout_s)
        # The same message (id, chain, callbacks, headers with its version, retry count).
        self.signature_from_request(countdown=wait).apply_async()
        return Retry(f"deferred {wait:.0f} s ({exc.what}, version {exc.version})", when=wait)

"""The cancel door: `send_task("vip_bundle.cancel", kwargs={"vip_bundle_id", "reason"},
queue="vip-bundles")`, and `cancel_bundle`, which the HTTP door and the CLI call too."""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from adapters import telemetry
from adapters.settings import get_settings
from adapters.store import BundleNotFound
from process_manager import saga
from process_manager.bundle import Bundle, Status
from process_manager.messages import CancelVipBundle, Event, InvalidRequest, parse_cancel
from tasks.archive import archive
from tasks.celery_app import app, store
from tasks.take_up import take_up

log = get_task_logger(__name__)


class CancelRefused(Exception):
    """The bundle cannot be cancelled (it already failed). `str()` says why."""


def cancel_bundle(vip_bundle_id: str, reason: str, who: str | None = None) -> Bundle:
    """Record a cancel request and start undoing; the bundle as stored after it.

    Raises `BundleNotFound`, or `CancelRefused` for a `failed` bundle. A bundle already
    `cancelling` or `cancelled` is returned as it is (cancelling is idempotent). Returns once
    the cancel is on a replica too (when the master has one), else raises `NotReplicated`.
    """
    # The undos join the bundle's trace (its stored context), linked to the request's.
    with telemetry.bundle_span(
        "vip_bundle.cancel", vip_bundle_id, lambda: _stored_context(vip_bundle_id), by=who
    ):
        return _cancel(vip_bundle_id, reason, who)


def _stored_context(vip_bundle_id: str) -> str | None:
    bundle = store().get(vip_bundle_id)  # read only when tracing is on
    return bundle.traceparent if bundle is not None else None


def _cancel(vip_bundle_id: str, reason: str, who: str | None) -> Bundle:
    refused: list[saga.CancelRefused] = []

    def decide(bundle: Bundle) -> Event | None:
        refused.clear()
        outcome = saga.cancel(bundle, reason, who)
        if isinstance(outcome, saga.CancelRefused):
            refused.append(outcome)
            return None
        return outcome

    try:
        applied = store().apply(vip_bundle_id, decide)
    except BundleNotFound:
        if (archived := _from_archive(vip_bundle_id)) is None:
            raise
        if archived.status is not Status.FINALIZED:  # failed: refused; cancelled: as it is
            if isinstance(outcome := saga.cancel(archived, reason, who), saga.CancelRefused):
                raise CancelRefused(outcome.reason) from None
            return archived
        applied = store().apply(vip_bundle_id, decide)
    if refused:
        raise CancelRefused(refused[0].reason)
    if applied.event is None:
        return _confirmed(applied.bundle)
    log.info("bundle %s: cancel requested (%s)", vip_bundle_id, reason)
    # Read again: only counters read after the cancel was stored are final (a forward step may
    # have started between our read and our write), and they decide which steps are in doubt.
    return _confirmed(take_up(store().require(vip_bundle_id)))


def _confirmed(bundle: Bundle) -> Bundle:
    """`bundle` once its stored version (the cancel) is on a replica too."""
    timeout_s = get_settings().replica_ack_timeout_s
    store().confirm_replicated(bundle.vip_bundle_id, bundle.version, timeout_s)
    return bundle


def _from_archive(vip_bundle_id: str) -> Bundle | None:
    """An archived bundle; a finalized one is first brought back into Redis (to be undone as a
    live one; the archive row is replaced when it is archived again)."""
    target = archive()
    if target is None or (bundle := target.get(vip_bundle_id)) is None:
        return None
    if bundle.status is Status.FINALIZED:
        # Back in Redis (unless it is there already: archived but not yet removed, or a racing
        # cancel restored it), then the row is marked so lists and searches skip it.
        store().restore(bundle.model_copy(update={"archived_at": None}))
        target.mark_restored(vip_bundle_id)
    return bundle


def answer(bundle: Bundle) -> dict[str, str]:
    """What the cancel doors answer (shared/intake-api.md)."""
    return {"vip_bundle_id": bundle.vip_bundle_id, "status": bundle.status.value}


@app.task(name="vip_bundle.cancel", throws=(InvalidRequest, BundleNotFound, CancelRefused))
def cancel(*args: Any, **request: Any) -> dict[str, str]:
    """Validate and record a cancel request. Returns `{"vip_bundle_id", "status"}`."""
    try:
        if args:
            raise InvalidRequest("request: send the fields as keyword arguments (kwargs=...)")
        parsed = parse_cancel(CancelVipBundle, request)
        bundle = cancel_bundle(parsed.vip_bundle_id, parsed.reason, who="celery")
    except (InvalidRequest, BundleNotFound, CancelRefused) as exc:
        log.warning("vip_bundle.cancel refused: %s", exc)
        raise
    return answer(bundle)

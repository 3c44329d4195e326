"""What every saga step does around its partner call: check it is still due, record the result.

Both ends read the stored state, so a step that is redelivered, replayed by the reconciler or
overtaken by a rollback does nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable

from celery.utils.log import get_task_logger

from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import Command, Event
from process_manager.store import Applied
from tasks.celery_app import store

log = get_task_logger(__name__)


def due(command: Command) -> Bundle | None:
    """The bundle if `command` is still to be done, else None (and a log line saying why)."""
    bundle = store().require(command.vip_bundle_id)
    if saga.is_pending(bundle, command):
        log.info("%s %s", type(command).__name__, command.model_dump(mode="json"))
        return bundle
    log.info(
        "%s: skipped, bundle %s is %s", type(command).__name__, command.vip_bundle_id, bundle.status
    )
    return None


def record(command: Command, outcome: Callable[[Bundle], Event], read: Bundle) -> Applied:
    """Apply the step's event atomically, unless someone else already did (or it moved on).

    `read` is the bundle as `due` read it: stored as the next version of it when nobody
    changed it meanwhile, else the bundle is read again and the step re-decided.
    """
    applied = store().apply(
        command.vip_bundle_id,
        lambda bundle: outcome(bundle) if saga.is_pending(bundle, command) else None,
        current=read,
    )
    if applied.event is None:
        log.info(
            "%s: result not recorded, bundle %s is %s",
            type(command).__name__,
            command.vip_bundle_id,
            applied.bundle.status,
        )
    return applied

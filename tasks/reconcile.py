"""The reconciler, run by celery beat: finishes every bundle whose message or callback was lost.

It works from the stored state only. A bundle in flight with no transition for
`STALE_AFTER_S` gets the rest of its chain (or its pending undos) sent again; the steps are
idempotent, so a step that was merely slow is not done twice. A parked bundle
(`compensation_failed`) is taken up again after a backoff that doubles with each failure, into
the rollback or the cancellation it was parked from. Both go through `tasks.take_up.take_up`, the
same function as an operator's resume.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from adapters.settings import get_settings
from process_manager.bundle import Bundle, Status
from process_manager.versions import NewerSchema
from tasks.celery_app import app, store
from tasks.schema_guard import note_newer
from tasks.steps import log
from tasks.take_up import take_up

FORWARD = (Status.INITIALIZED, Status.BOOKING_MADE, Status.INBOUND_BOOKED, Status.RETURN_BOOKED)
# Statuses in which a bundle left alone for STALE_AFTER_S is taken up, and what that counts as.
STALE = {
    **dict.fromkeys(FORWARD, "resumed"),
    Status.ROLLING_BACK: "rollbacks_resumed",
    Status.CANCELLING: "rollbacks_resumed",
}


def parked_retry_due(bundle: Bundle, now: float) -> bool:
    s = get_settings()
    wait = min(
        s.parked_retry_base_s * 2 ** max(bundle.compensation_failures - 1, 0), s.parked_retry_max_s
    )
    return bundle.updated_at.timestamp() + wait <= now


@contextmanager
def _newer_left_alone() -> Iterator[None]:
    """A bundle a newer release wrote is that release's reconciler's to take up: skipped
    (and reported once), so that it does not hold up this pass over the others."""
    try:
        yield
    except NewerSchema as exc:
        note_newer(exc, exc.bundle_id)


@app.task(name="vip_bundle.reconcile", ignore_result=True)
def reconcile() -> dict[str, int]:
    """One pass over stale and parked bundles. Returns how many of each it took up."""
    s, st, now = get_settings(), store(), time.time()
    counts = {"resumed": 0, "rollbacks_resumed": 0, "parked_retried": 0}
    for status, count in STALE.items():
        for bundle_id in st.stale(status, s.stale_after_s):
            with _newer_left_alone():
                if (bundle := st.get(bundle_id)) is not None and bundle.status is status:
                    take_up(bundle)
                    counts[count] += 1
    for bundle_id in st.stale(Status.COMPENSATION_FAILED, s.parked_retry_base_s):
        with _newer_left_alone():
            bundle = st.get(bundle_id)
            if bundle is None or not parked_retry_due(bundle, now):
                continue
            if take_up(bundle).status is not Status.COMPENSATION_FAILED:
                counts["parked_retried"] += 1
    if any(counts.values()):
        log.info("reconcile: %s", counts)
    return counts

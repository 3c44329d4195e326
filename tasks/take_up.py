"""Taking a bundle up again from its stored state: the one way the reconciler, the releaser of
steps that waited on a partner, a cancel and an operator's resume restart a saga."""

from __future__ import annotations

from adapters import telemetry
from process_manager import saga
from process_manager.bundle import UNDOING, Bundle, Status
from process_manager.messages import Event
from tasks.celery_app import store
from tasks.saga import run_forward, run_rollback


def take_up(bundle: Bundle, by: str | None = None) -> Bundle:
    """Take a bundle up now: the one way the reconciler and operators restart a saga.

    A parked bundle resumes into the undoing it was parked from (`RollbackResumed` or
    `CancellationResumed`) and its pending undos are sent. A bundle in flight gets the rest of
    its chain (or its pending undos) sent again; the steps are idempotent, so a step merely
    slow is not done twice. `by` names an operator: their request is recorded in the history
    (`by=...`, through the atomic transition); without it (the reconciler) the bundle is only
    marked as looked after now. A final bundle is left alone. Returns the bundle as stored.
    """
    # The bundle's trace goes on from its stored context, linked to whoever asked.
    with telemetry.bundle_span(
        "vip_bundle.take_up",
        bundle.vip_bundle_id,
        bundle.traceparent,
        by=by or "reconciler",
        status=str(bundle.status),
    ):
        return _take_up(bundle, by)


def _take_up(bundle: Bundle, by: str | None) -> Bundle:
    st = store()
    if bundle.status is Status.COMPENSATION_FAILED:
        applied = st.apply(bundle.vip_bundle_id, lambda b: _resume_parked(b, by), current=bundle)
        if applied.event is None and by is None:
            return applied.bundle  # someone else took it up meanwhile
        bundle = applied.bundle
    elif by is not None:
        # A BundleResumed refused (the bundle settled meanwhile) records nothing.
        bundle = st.apply(
            bundle.vip_bundle_id, lambda b: saga.resumed(b, by), current=bundle
        ).bundle
    else:
        st.touch(bundle)  # not again before the next STALE_AFTER_S
    send_next(bundle)
    return bundle


def _resume_parked(bundle: Bundle, by: str | None) -> Event | None:
    if bundle.status is Status.COMPENSATION_FAILED:
        return saga.resume_parked(bundle, by)
    # No longer parked (a rival took it up): an operator's request is still noted.
    return saga.resumed(bundle, by) if by is not None else None


def send_next(bundle: Bundle) -> None:
    """Send what the stored state says comes next: the pending undos, or the rest of the chain."""
    if bundle.status in UNDOING and bundle.status is not Status.COMPENSATION_FAILED:
        run_rollback(bundle)
    elif saga.remaining_steps(bundle):
        run_forward(bundle)

"""The Celery door: `send_task("vip_bundle.book", kwargs=request, queue="vip-bundles")`."""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_task_logger

from adapters import telemetry
from adapters.settings import get_settings
from adapters.store_retention import BundleArchived
from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import BookVipBundle, InvalidRequest, parse_request
from tasks.celery_app import app, store
from tasks.saga import run_forward

log = get_task_logger(__name__)


def book_bundle(
    request: BookVipBundle, correlation_id: str | None = None, tenant: str | None = None
) -> tuple[Bundle, bool]:
    """Store a validated request and start its saga; the same id twice is one bundle.

    Returns (bundle, created) once the bundle is on a replica too (when the master has one),
    so that no failover loses a bundle whose id a caller was given. Raises `InvalidRequest` if
    the id exists with another request (or another tenant's), `NotReplicated` if no replica
    acknowledged in time. `tenant`: the owner, from the HTTP door's key.
    """
    # The bundle's trace starts here (under the door's request or task span): its context is
    # stored with the bundle, for the work that later starts from the stored state.
    with telemetry.span("vip_bundle.intake"):
        fresh = Bundle.from_request(request, correlation_id, tenant, telemetry.traceparent())
        telemetry.annotate(fresh)
        try:
            bundle, created = store().create(fresh, saga.initialized(fresh))
        except BundleArchived as archived:
            # Settled and archived: Redis kept its request's digest. The same request answers
            # the same ids (derived from the bundle id) and books nothing; another is refused.
            if archived.digest != fresh.request_digest():
                raise _different_request(fresh.vip_bundle_id) from None
            return fresh, False
        telemetry.annotate(outcome="created" if created else "existed")
        if created:
            # If this process dies before the chain is sent, the reconciler starts it.
            run_forward(bundle)
        elif not bundle.same_request(request, tenant):
            raise _different_request(bundle.vip_bundle_id)
        store().confirm_replicated(bundle.vip_bundle_id, 1, get_settings().replica_ack_timeout_s)
        return bundle, created


def _different_request(bundle_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"vip_bundle_id: {bundle_id} already names a different request",
        [{"field": "vip_bundle_id", "message": "already names a different request"}],
    )


@app.task(name="vip_bundle.book", throws=(InvalidRequest,))
def book(*args: Any, **request: Any) -> dict[str, str]:
    """Validate, store and start a VIP bundle. Returns `{"vip_bundle_id", "booking_id"}`."""
    if args:
        raise InvalidRequest("request: send the fields as keyword arguments (kwargs=...)")
    try:
        bundle, _ = book_bundle(parse_request(request))
    except InvalidRequest as exc:
        log.warning("vip_bundle.book refused: %s", exc)
        raise
    return bundle.answer()

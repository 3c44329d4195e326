"""The intake and bundle routes (shared/intake-api.md, door 2, "Cancelling", "Operator doors").

    POST /book-vip-bundle              -> 201 {"vip_bundle_id", "booking_id"} | 422 {"errors"}
    GET  /vip-bundles/{vip_bundle_id}  -> 200 the bundle (JSON, or an HTML page for a browser)
    GET  /vip-bundles?status=failed    -> 200 a page of bundle summaries
    GET  /vip-bundles?q=TEXT           -> 200 bundles whose id, booking id, email or correlation
                                          id is TEXT, whatever their status
    POST /vip-bundles/{id}/cancel      -> 202 {"vip_bundle_id", "status"} | 404 | 409 | 422
    POST /vip-bundles/{id}/resume      -> 202 {"vip_bundle_id", "status"} | 404 | 409 (final)

A key with a tenant sees only its tenant's bundles (vip_bundles/guard/tenants.py): any other
answers the very 404 of an unknown id.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from process_manager.bundle import FINAL, Status
from process_manager.messages import BookVipBundle, CancelReason, parse_cancel, parse_request
from vip_bundles.guard.tenants import tenant_of, visible
from vip_bundles.http.errors import ERRORS_422, Errors, error, errors_response, unknown_bundle
from vip_bundles.http.json_body import json_object
from vip_bundles.http.negotiation import prefers_html
from vip_bundles.pages import page_context, render
from vip_bundles.views import bundle_summary, bundle_view

log = logging.getLogger(__name__)

MAX_PAGE = 500
MAX_QUERY = 320  # the longest search text worth looking up (an email address is at most 254)

router = APIRouter()


class Answer(BaseModel):
    vip_bundle_id: str
    booking_id: str


class CancelAnswer(BaseModel):
    vip_bundle_id: str
    status: Status


def _json_body(schema: type[BaseModel]) -> dict[str, Any]:
    # The body is read raw (to name malformed JSON as an error like any other): document it.
    content = {"application/json": {"schema": schema.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/book-vip-bundle",
    status_code=201,
    response_model=Answer,
    responses=ERRORS_422,
    openapi_extra=_json_body(BookVipBundle),
)
async def book_vip_bundle(
    request: Request,
    correlation_id: Annotated[str | None, Header(alias="Correlation-ID")] = None,
) -> JSONResponse:
    """Validate and book a bundle; the same vip_bundle_id twice is one bundle. Booked with a
    tenant's key, the bundle belongs to that tenant."""
    booking = parse_request(json_object(await request.body()))
    from tasks.intake import book_bundle

    # The caller's correlation id is kept on the bundle and carried by all its events and
    # partner calls; without one, the bundle id serves.
    tenant = tenant_of(request.state)
    bundle, created = await run_in_threadpool(book_bundle, booking, correlation_id, tenant)
    log.info(
        "book-vip-bundle %s created=%s correlation_id=%s",
        bundle.vip_bundle_id,
        created,
        correlation_id,
    )
    headers = {"Correlation-ID": correlation_id} if correlation_id else None
    return JSONResponse(bundle.answer(), status_code=201, headers=headers)


@router.get(
    "/vip-bundles/{vip_bundle_id}",
    responses={
        200: {"content": {"text/html": {}}, "description": "the bundle, or its page"},
        404: {"model": Errors},
        **ERRORS_422,
    },
)
def get_vip_bundle(vip_bundle_id: str, request: Request) -> Response:
    """The bundle as JSON; the timeline page when the Accept header prefers text/html."""
    from tasks.archive import finder

    bundle = finder().get(vip_bundle_id)
    html = prefers_html(request.headers.get("accept"))
    vary = {"Vary": "Accept"}
    if bundle is None or not visible(bundle, tenant_of(request.state)):
        if html:
            page = render("not_found.html", vip_bundle_id=vip_bundle_id)
            return HTMLResponse(page, status_code=404, headers=vary)
        return unknown_bundle(headers=vary)
    if html:
        return HTMLResponse(render("bundle.html", **page_context(bundle)), headers=vary)
    return JSONResponse(bundle_view(bundle), headers=vary)


def _hidden(vip_bundle_id: str, request: Request) -> bool:
    """True when a tenant's key asks about a bundle it may not see (or that does not exist);
    operators' requests cost no read here."""
    tenant = tenant_of(request.state)
    if tenant is None:
        return False
    from tasks.archive import finder

    return not visible(finder().get(vip_bundle_id), tenant)


@router.post(
    "/vip-bundles/{vip_bundle_id}/cancel",
    status_code=202,
    response_model=CancelAnswer,
    responses={404: {"model": Errors}, 409: {"model": Errors}, **ERRORS_422},
    openapi_extra=_json_body(CancelReason),
)
async def cancel_vip_bundle(vip_bundle_id: str, request: Request) -> JSONResponse:
    """Cancel a bundle: undo everything it booked; it ends `cancelled`. Idempotent."""
    body = parse_cancel(CancelReason, json_object(await request.body()))
    from adapters.store import BundleNotFound
    from tasks.cancel import CancelRefused, answer, cancel_bundle

    if await run_in_threadpool(_hidden, vip_bundle_id, request):
        return unknown_bundle()
    # Who asked: the key's fingerprint the access guard found ("local" on loopback).
    key_name = getattr(request.state, "api_key_name", None)
    who = f"http:{key_name}" if key_name else "http"
    try:
        bundle = await run_in_threadpool(cancel_bundle, vip_bundle_id, body.reason, who)
    except BundleNotFound:
        return unknown_bundle()
    except CancelRefused as exc:
        return errors_response(409, [error("status", str(exc))])
    log.info("cancel %s: %s", vip_bundle_id, bundle.status)
    return JSONResponse(answer(bundle), status_code=202)


@router.get("/vip-bundles", responses=ERRORS_422, response_model=None)
def list_vip_bundles(
    request: Request,
    status: Annotated[Status | None, Query()] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> Response | dict[str, Any]:
    """Bundles in one status, most recently changed first; or, with `q`, the bundles whose
    id, booking id, customer email (any case) or correlation id is exactly `q`. A tenant's key
    pages over its own bundles only."""
    from tasks.archive import finder

    st, tenant = finder(), tenant_of(request.state)  # pages continue into the archive
    if q is not None:
        found = [b for b in st.search(q) if visible(b, tenant)]
        return {
            "q": q,
            "total": len(found),
            "offset": offset,
            "limit": limit,
            "items": [bundle_summary(b) for b in found[offset : offset + limit]],
        }
    if status is None:
        return errors_response(422, [error("status", "give status=... or q=...")])
    return {
        "status": status.value,
        "total": st.count(status, tenant=tenant),
        "offset": offset,
        "limit": limit,
        "items": [bundle_summary(b) for b in st.list(status, offset, limit, tenant=tenant)],
    }


@router.post(
    "/vip-bundles/{vip_bundle_id}/resume",
    status_code=202,
    responses={404: {"model": Errors}, 409: {"model": Errors}, **ERRORS_422},
)
def resume_vip_bundle(vip_bundle_id: str, request: Request) -> JSONResponse:
    """Take a bundle up now: a parked one is resumed, one in flight has its next step (or
    pending undos) sent again. Recorded in its history with who asked."""
    from tasks.archive import finder
    from tasks.take_up import take_up

    bundle = finder().get(vip_bundle_id)
    if bundle is None or not visible(bundle, tenant_of(request.state)):
        return unknown_bundle()
    if bundle.status in FINAL:
        return errors_response(409, [error("status", f"the bundle is {bundle.status}")])
    by = getattr(request.state, "api_key_name", "local")
    taken = take_up(bundle, by=by)
    log.info("resume %s by %s: %s", vip_bundle_id, by, taken.status)
    if taken.status in FINAL:  # it settled while we looked: nothing was taken up
        return errors_response(409, [error("status", f"the bundle is {taken.status}")])
    return JSONResponse(
        {"vip_bundle_id": vip_bundle_id, "status": taken.status.value}, status_code=202
    )

"""The HTTP door (shared/intake-api.md, door 2) and the bundle timeline page.

    POST /book-vip-bundle              -> 201 {"vip_bundle_id", "booking_id"} | 422 {"errors"}
    GET  /vip-bundles/{vip_bundle_id}  -> 200 the bundle (JSON, or an HTML page for a browser)
    GET  /vip-bundles?status=failed    -> 200 a page of bundle summaries
    GET  /vip-bundles?q=TEXT           -> 200 bundles whose id, booking id, email or correlation
                                          id is TEXT, whatever their status
    POST /vip-bundles/{id}/cancel      -> 202 {"vip_bundle_id", "status"} | 404 | 409 | 422
    POST /vip-bundles/{id}/resume      -> 202 {"vip_bundle_id", "status"} | 404 | 409 (final)
    GET  /                             -> the operator's console (HTML); /dashboard.json its data
    GET  /metrics                      -> Prometheus text format
    GET  /health                       -> 200 when Redis answers

Every error, FastAPI's own included, answers `{"errors": [{"field", "message"}]}`. Nothing
here talks to Redis or the broker until a request comes: the clients are lazy getters.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from redis import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.metrics import RedisCollector
from adapters.metrics_memory import MemoryCollector
from adapters.settings import get_settings
from process_manager.bundle import FINAL, Status
from process_manager.messages import (
    BookVipBundle,
    CancelReason,
    InvalidRequest,
    parse_cancel,
    parse_request,
    utcnow,
)
from vip_bundles.access import DoorGuard, is_loopback, parse_api_keys
from vip_bundles.api_archive import install_archive_errors
from vip_bundles.console_view import MOVES_WINDOW_MIN, console_context, console_data
from vip_bundles.memory_view import memory_view
from vip_bundles.pages import page_context, render
from vip_bundles.views import bundle_summary, bundle_view

log = logging.getLogger(__name__)

MAX_PAGE = 500
MAX_QUERY = 320  # the longest search text worth looking up (an email address is at most 254)
CONSOLE_LIST = 20  # rows in each of the console's lists
UNKNOWN_BUNDLE = "unknown vip bundle"


# --- response shapes (for the OpenAPI document; handlers answer plain dicts) ---------------------


class FieldError(BaseModel):
    field: str
    message: str


class Errors(BaseModel):
    errors: list[FieldError]


class Answer(BaseModel):
    vip_bundle_id: str
    booking_id: str


class CancelAnswer(BaseModel):
    vip_bundle_id: str
    status: Status


ERRORS_422 = {422: {"model": Errors, "description": "every bad field, named"}}


def errors_response(status_code: int, errors: list[dict[str, str]], **kw: Any) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status_code, **kw)


def error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


# --- the app -------------------------------------------------------------------------------------


def create_app(api_keys: str | None = None) -> FastAPI:
    """The HTTP door. No I/O here: Redis and the broker are reached on the first request.

    `api_keys` (default: the `API_KEYS` setting) grants access; see vip_bundles/access.py.
    """
    # /docs and /redoc load their assets from a CDN; the OpenAPI document itself is served.
    app = FastAPI(title="vip-bundles", version="1", docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    install_archive_errors(app)
    app.add_middleware(DoorGuard, keys=parse_api_keys(api_keys or configured_api_keys()))

    @app.post(
        "/book-vip-bundle",
        status_code=201,
        response_model=Answer,
        responses=ERRORS_422,
        # The body is read raw (to name malformed JSON as an error like any other): document it.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": BookVipBundle.model_json_schema()}},
            }
        },
    )
    async def book_vip_bundle(
        request: Request,
        correlation_id: Annotated[str | None, Header(alias="Correlation-ID")] = None,
    ) -> JSONResponse:
        """Validate and book a bundle; the same vip_bundle_id twice is one bundle."""
        booking = parse_request(json_object(await request.body()))
        from tasks.intake import book_bundle

        # The caller's correlation id is kept on the bundle and carried by all its events and
        # partner calls; without one, the bundle id serves.
        bundle, created = await run_in_threadpool(book_bundle, booking, correlation_id)
        log.info(
            "book-vip-bundle %s created=%s correlation_id=%s",
            bundle.vip_bundle_id,
            created,
            correlation_id,
        )
        headers = {"Correlation-ID": correlation_id} if correlation_id else None
        return JSONResponse(bundle.answer(), status_code=201, headers=headers)

    @app.get(
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

        bundle = finder().get(vip_bundle_id)  # live in Redis, or archived
        html = prefers_html(request.headers.get("accept"))
        vary = {"Vary": "Accept"}
        if bundle is None:
            if html:
                page = render("not_found.html", vip_bundle_id=vip_bundle_id)
                return HTMLResponse(page, status_code=404, headers=vary)
            return errors_response(404, [error("vip_bundle_id", UNKNOWN_BUNDLE)], headers=vary)
        if html:
            return HTMLResponse(render("bundle.html", **page_context(bundle)), headers=vary)
        return JSONResponse(bundle_view(bundle), headers=vary)

    @app.post(
        "/vip-bundles/{vip_bundle_id}/cancel",
        status_code=202,
        response_model=CancelAnswer,
        responses={404: {"model": Errors}, 409: {"model": Errors}, **ERRORS_422},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CancelReason.model_json_schema()}},
            }
        },
    )
    async def cancel_vip_bundle(vip_bundle_id: str, request: Request) -> JSONResponse:
        """Cancel a bundle: undo everything it booked; it ends `cancelled`. Idempotent."""
        body = parse_cancel(CancelReason, json_object(await request.body()))
        from adapters.store import BundleNotFound
        from tasks.cancel import CancelRefused, answer, cancel_bundle

        # Who asked: the key's fingerprint the access guard found ("local" on loopback).
        key_name = getattr(request.state, "api_key_name", None)
        who = f"http:{key_name}" if key_name else "http"
        try:
            bundle = await run_in_threadpool(cancel_bundle, vip_bundle_id, body.reason, who)
        except BundleNotFound:
            return errors_response(404, [error("vip_bundle_id", UNKNOWN_BUNDLE)])
        except CancelRefused as exc:
            return errors_response(409, [error("status", str(exc))])
        log.info("cancel %s: %s", vip_bundle_id, bundle.status)
        return JSONResponse(answer(bundle), status_code=202)

    @app.get("/vip-bundles", responses=ERRORS_422, response_model=None)
    def list_vip_bundles(
        status: Annotated[Status | None, Query()] = None,
        q: Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> Response | dict[str, Any]:
        """Bundles in one status, most recently changed first; or, with `q`, the bundles whose
        id, booking id, customer email (any case) or correlation id is exactly `q`."""
        from tasks.archive import finder

        st = finder()  # pages of a final status continue into the archive
        if q is not None:
            found = st.search(q)
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
            "total": st.count(status),
            "offset": offset,
            "limit": limit,
            "items": [bundle_summary(b) for b in st.list(status, offset, limit)],
        }

    @app.post(
        "/vip-bundles/{vip_bundle_id}/resume",
        status_code=202,
        responses={404: {"model": Errors}, 409: {"model": Errors}, **ERRORS_422},
    )
    def resume_vip_bundle(vip_bundle_id: str, request: Request) -> JSONResponse:
        """Take a bundle up now: a parked one is resumed, one in flight has its next step (or
        pending undos) sent again. Recorded in its history with who asked."""
        from tasks.archive import finder
        from tasks.saga import take_up

        bundle = finder().get(vip_bundle_id)  # an archived one is final: 409
        if bundle is None:
            return errors_response(404, [error("vip_bundle_id", UNKNOWN_BUNDLE)])
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

    @app.get("/", response_class=HTMLResponse, responses=ERRORS_422)
    def console(q: Annotated[str | None, Query(max_length=MAX_QUERY)] = None) -> HTMLResponse:
        """The operator's console: the fleet on the saga's diagram, parked and recent failures,
        search. It refreshes its numbers from /dashboard.json."""
        from tasks.archive import finder

        s = get_settings()
        found = finder().search(q)[:MAX_PAGE] if q and q.strip() else None
        links = {"flower": s.flower_url, "metrics": "metrics", "json": "dashboard.json"}
        context = console_context(_console_data(), q, found, links)
        page = render("dashboard.html", **context, refresh_ms=int(s.console_refresh_s * 1000))
        return HTMLResponse(page)

    @app.get("/dashboard.json")
    def console_json() -> dict[str, Any]:
        """The console's numbers and lists (what the page refreshes itself with)."""
        return _console_data()

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text format, summed over every worker through Redis."""
        from tasks.celery_app import store

        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(store()))
        registry.register(MemoryCollector(store(), get_settings().archive_url is not None))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health", responses={503: {"model": Errors}})
    def health() -> dict[str, str]:
        from tasks.celery_app import redis_client

        redis_client().ping()  # a RedisError becomes a 503 below
        return {"status": "ok", "redis": "ok"}

    return app


def _console_data() -> dict[str, Any]:
    from tasks.celery_app import store

    st = store()
    data = console_data(
        counts=st.counts(),
        moves=st.recent_moves(MOVES_WINDOW_MIN),
        parked=st.list(Status.COMPENSATION_FAILED, 0, CONSOLE_LIST),
        failed=st.list(Status.FAILED, 0, CONSOLE_LIST),
        cancelled=st.list(Status.CANCELLED, 0, CONSOLE_LIST),
        now=utcnow(),
    )
    return {**data, "memory": memory_view(st)}


def configured_api_keys() -> str | None:
    secret = get_settings().api_keys
    return secret.get_secret_value() if secret is not None else None


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP door in the foreground (`vip-bundles api`).

    Refuses (ValueError, saying why) to listen beyond loopback without API_KEYS, or with
    malformed API_KEYS.
    """
    keys = parse_api_keys(configured_api_keys())
    if not keys and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without API_KEYS: anyone who can reach it could book "
            "and read bundles. Set API_KEYS (see the README's production section) or serve "
            "on 127.0.0.1."
        )
    uvicorn.run(create_app(), host=host, port=port, log_level="info", http=http_protocol())


def http_protocol() -> type | str:
    """uvicorn's httptools protocol, told to pass control characters in header values on to
    the app, which refuses them naming the header (a 422 for Correlation-ID, as the contract
    says) instead of the parser's bare "400 Invalid HTTP request"."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11 answers such a request 400 itself
        return "auto"

    class LenientHeaders(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            with contextlib.suppress(AttributeError, TypeError):  # httptools < 0.6.3
                self.parser.set_dangerous_leniencies(
                    lenient_data_after_close=True, lenient_headers=True
                )

    return LenientHeaders


# --- errors: one shape for all of them -----------------------------------------------------------

_PARAM_SOURCES = {"body", "query", "path", "header", "cookie"}


def _field_of(loc: tuple[Any, ...]) -> str:
    """`("query", "limit")` -> `"limit"`: callers know fields by name, not by where they sat."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _PARAM_SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "request"


def _install_error_handlers(app: FastAPI) -> None:
    async def invalid_request(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidRequest)
        return errors_response(422, exc.errors or [error("request", str(exc))])

    async def validation_failed(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        found = [error(_field_of(tuple(e["loc"])), e["msg"]) for e in exc.errors()]
        return errors_response(422, found)

    async def http_error(_: Request, exc: Exception) -> Response:
        # Unknown routes (404), wrong methods (405): FastAPI would answer {"detail": ...}.
        assert isinstance(exc, StarletteHTTPException)
        field = getattr(exc, "field", "path")  # e.g. "body" for a body over the limit
        return errors_response(
            exc.status_code, [error(field, str(exc.detail))], headers=exc.headers
        )

    async def store_unavailable(_: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        return errors_response(503, [error("redis", "the state store is unavailable")])

    async def crashed(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return errors_response(500, [error("server", "internal error")])

    app.add_exception_handler(InvalidRequest, invalid_request)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RedisError, store_unavailable)
    app.add_exception_handler(Exception, crashed)


MAX_DEPTH = 32  # a request nests 2 deep; anything near this is not one


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `InvalidRequest` naming `body` (never a 500)."""
    try:
        data = json.loads(raw)
    except RecursionError:  # the parser's own stack: nested far beyond MAX_DEPTH
        raise InvalidRequest("body: nests too deep", [error("body", "nests too deep")]) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            "body: not valid JSON", [error("body", f"invalid JSON: {exc}")]
        ) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise InvalidRequest(
            "body: not a JSON object", [error("body", f"must be a JSON object, got {kind}")]
        )
    if _depth(data) > MAX_DEPTH:
        raise InvalidRequest(
            "body: nests too deep", [error("body", f"nests more than {MAX_DEPTH} levels deep")]
        )
    return data


def _depth(value: Any) -> int:
    """How deep arrays and objects nest (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


# --- content negotiation -------------------------------------------------------------------------


def prefers_html(accept: str | None) -> bool:
    """True when the Accept header ranks text/html above JSON (a browser); JSON on a tie."""
    if not accept:
        return False
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media:
            ranges[media.lower()] = max(q, ranges.get(media.lower(), 0.0))

    def quality(media: str) -> float:
        kind = media.split("/")[0]
        for candidate in (media, f"{kind}/*", "*/*"):  # the most specific range decides
            if candidate in ranges:
                return ranges[candidate]
        return 0.0

    return quality("text/html") > quality("application/json")

"""One shape for every error the door writes: `{"errors": [{"field", "message"}]}`.

FastAPI's own errors (validation, unknown route, wrong method) are mapped onto it too; a Redis
outage is a 503, a client that hangs up mid-body gets a 400 nobody reads, anything else a 500
that is logged (never the request's data).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from redis import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from adapters.archive import ArchiveUnavailable
from adapters.redis_connection import NotReplicated
from process_manager.messages import InvalidRequest
from process_manager.versions import NewerSchema

log = logging.getLogger(__name__)

UNKNOWN_BUNDLE = "unknown vip bundle"


class FieldError(BaseModel):
    field: str
    message: str


class Errors(BaseModel):
    errors: list[FieldError]


ERRORS_422 = {422: {"model": Errors, "description": "every bad field, named"}}


RETRY_SOON = {"Retry-After": "5"}


def errors_response(status_code: int, errors: list[dict[str, str]], **kw: Any) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status_code, **kw)


def error(field: str, message: str) -> dict[str, str]:
    return {"field": field, "message": message}


def unknown_bundle(**kw: Any) -> JSONResponse:
    """The 404 of an unknown bundle, and of another tenant's: the very same answer."""
    return errors_response(404, [error("vip_bundle_id", UNKNOWN_BUNDLE)], **kw)


_PARAM_SOURCES = {"body", "query", "path", "header", "cookie"}


def _field_of(loc: tuple[Any, ...]) -> str:
    """`("query", "limit")` -> `"limit"`: callers know fields by name, not by where they sat."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in _PARAM_SOURCES:
        parts = parts[1:]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
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

    async def hung_up(_: Request, exc: Exception) -> Response:
        # The client went away, or the parser gave up on the body's framing (it answers its
        # own 400 then): nothing was read, nothing is booked, nobody reads this answer.
        return errors_response(400, [error("body", "the request ended before its body did")])

    async def store_unavailable(_: Request, exc: Exception) -> Response:
        log.warning("redis unavailable: %s", exc)
        if isinstance(exc, NotReplicated):  # written, but no replica has it yet: not promised
            message = "not confirmed by a replica in time; send the same request again"
        else:
            message = "the state store is unavailable"
        return errors_response(503, [error("redis", message)])

    async def archive_unavailable(_: Request, exc: Exception) -> Response:
        log.warning("%s", exc)  # names no URL or password (adapters/archive.py)
        return errors_response(503, [error("archive", "the archive cannot be reached")])

    async def newer_release(_: Request, exc: Exception) -> Response:
        # Written by a newer release (a rolling deploy under way): its doors answer for it.
        log.info("%s", exc)
        message = "written by a newer release of this service; ask again shortly"
        return errors_response(503, [error("schema_version", message)], headers=RETRY_SOON)

    async def crashed(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return errors_response(500, [error("server", "internal error")])

    app.add_exception_handler(InvalidRequest, invalid_request)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, hung_up)
    app.add_exception_handler(RedisError, store_unavailable)
    app.add_exception_handler(ArchiveUnavailable, archive_unavailable)
    app.add_exception_handler(NewerSchema, newer_release)
    app.add_exception_handler(Exception, crashed)

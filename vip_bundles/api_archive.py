"""What the HTTP door adds for the archive: an unreachable archive answers 503 in the door's
error shape (never a 500), naming no URL or password."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from adapters.archive import ArchiveUnavailable


def install_archive_errors(app: FastAPI) -> None:
    async def archive_unavailable(_: Request, exc: Exception) -> Response:
        message = "the archive cannot be reached; try again later"
        return JSONResponse({"errors": [{"field": "archive", "message": message}]}, 503)

    app.add_exception_handler(ArchiveUnavailable, archive_unavailable)

"""What the door will read (shared/intake-api.md, "Limits").

- A body over 64 KiB -> 413, found while it streams in (a `Content-Length` is not trusted
  alone), before the application has parsed any of it.
- A `Correlation-ID` over 128 characters, or with anything but printable ASCII, -> 422 naming
  it: it is copied into every event and partner call of the bundle. Control characters never
  get this far: the HTTP parser refuses them with its own 400 (it is never loosened).
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException

MAX_BODY_BYTES = 64 * 1024
MAX_CORRELATION_ID = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def correlation_id_problem(value: str) -> str | None:
    if len(value) > MAX_CORRELATION_ID:
        return f"at most {MAX_CORRELATION_ID} characters"
    if _CONTROL.search(value):
        return "control characters are not allowed"
    if not _PRINTABLE_ASCII.fullmatch(value):
        # It is copied into every partner call's headers, which carry ASCII only.
        return "printable ASCII characters only"
    return None


def declared_too_large(content_length: str | None) -> bool:
    return bool(
        content_length and content_length.isdigit() and int(content_length) > MAX_BODY_BYTES
    )


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, so the app's own error handlers answer the 413."""

    field = "body"

    def __init__(self) -> None:
        super().__init__(413, f"at most {MAX_BODY_BYTES} bytes")

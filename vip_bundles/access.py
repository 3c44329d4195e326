"""Who may use the HTTP door, and what it will read: API keys, scopes and request limits.

shared/intake-api.md, "Limits" and "Access":
- `API_KEYS=k-shop:book+read,k-ops:read+operate`: each key with the scopes it grants. Callers
  send `Authorization: Bearer <key>`; a browser may use HTTP Basic, any user name, the key as
  password. With keys set, every route but `GET /health` needs one: none or unknown -> 401
  (with `WWW-Authenticate`), a key without the route's scope -> 403.
- Without `API_KEYS` the door serves loopback clients only (and `vip-bundles api` refuses to
  listen anywhere else).
- A body over 64 KiB -> 413, found while streaming it in (a `Content-Length` is not trusted
  alone); a `Correlation-ID` over 128 characters or with control characters -> 422.

Keys are compared in constant time and never logged: a key is known in logs and in a bundle's
history by its name, a fingerprint (`key-` + the first 12 hex digits of its SHA-256).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

SCOPES = ("book", "read", "operate")
MAX_BODY_BYTES = 64 * 1024
MAX_CORRELATION_ID = 128
CHALLENGE = 'Bearer realm="vip-bundles", Basic realm="vip-bundles"'
OPEN = frozenset[str]()  # a route anyone may call
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    scopes: frozenset[str]

    @property
    def name(self) -> str:
        return "key-" + hashlib.sha256(self.secret).hexdigest()[:12]


def parse_api_keys(text: str | None) -> list[ApiKey]:
    """`key:scope+scope,...` -> keys; a malformed entry is a ValueError that names it by its
    position and fingerprint, never by the key itself."""
    keys = []
    for n, entry in enumerate((text or "").split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        secret, sep, scopes = entry.rpartition(":")
        wanted = frozenset(s.strip() for s in scopes.split("+") if s.strip())
        if not sep or not secret or not wanted or not wanted <= set(SCOPES):
            fingerprint = ApiKey(secret.encode(), frozenset()).name if secret else "(empty key)"
            raise ValueError(
                f"API_KEYS entry {n} ({fingerprint}): write key:scopes with scopes from "
                f"{', '.join(SCOPES)} joined by '+'"
            )
        keys.append(ApiKey(secret.encode(), wanted))
    return keys


def required_scopes(method: str, path: str) -> frozenset[str]:
    """The scopes of which a key needs one for this route (OPEN: none needed)."""
    if path == "/health" and method in ("GET", "HEAD"):
        return OPEN
    if method == "POST" and path == "/book-vip-bundle":
        return frozenset({"book"})
    if method == "POST" and path.startswith("/vip-bundles/") and path.endswith("/cancel"):
        return frozenset({"book", "operate"})  # a customer's service or an operator
    if method in ("GET", "HEAD"):
        return frozenset({"read"})  # pages and /metrics included
    return frozenset({"operate"})  # the other operator actions (resume, ...)


def presented_key(authorization: str | None) -> bytes | None:
    """The key from `Bearer <key>`, or the password of HTTP Basic."""
    if not authorization:
        return None
    kind, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if kind.lower() == "bearer":
        return credentials.encode() or None
    if kind.lower() == "basic":
        try:
            _, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except ValueError:
            return None
        return password if sep and password else None
    return None


def authenticate(presented: bytes | None, keys: list[ApiKey]) -> ApiKey | None:
    """The key presented, compared with every configured key in constant time."""
    if presented is None:
        return None
    found = None
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        if hmac.compare_digest(presented, key.secret):
            found = key
    return found


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def correlation_id_problem(value: str) -> str | None:
    if len(value) > MAX_CORRELATION_ID:
        return f"at most {MAX_CORRELATION_ID} characters"
    if _CONTROL.search(value):
        return "control characters are not allowed"
    if not _PRINTABLE_ASCII.fullmatch(value):
        # It is copied into every partner call's headers, which carry ASCII only.
        return "printable ASCII characters only"
    return None


class BodyTooLarge(HTTPException):
    """Raised while the body streams in, so the app's own error handlers answer the 413."""

    field = "body"

    def __init__(self) -> None:
        super().__init__(413, f"at most {MAX_BODY_BYTES} bytes")


class DoorGuard:
    """ASGI middleware in front of every route: access first, then the request's limits.

    It answers the refusals itself, in the door's `{"errors": [...]}` shape, before the
    application reads anything of the body.
    """

    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _answer(send, 413, "body", f"at most {MAX_BODY_BYTES} bytes")
            return
        await self._call_with_body_limit(scope, receive, send)

    def _refusal(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[int, str, str, dict[str, str]] | None:
        needed = required_scopes(scope["method"], scope["path"])
        client = scope.get("client")
        if not self.keys:
            if not is_loopback(client[0] if client else None):
                return 403, "client", "no API_KEYS set: this door serves loopback only", {}
            scope.setdefault("state", {})["api_key_name"] = "local"
        elif needed:
            key = authenticate(presented_key(headers.get("authorization")), self.keys)
            if key is None:
                challenge = {"WWW-Authenticate": CHALLENGE}
                return 401, "Authorization", "a valid API key is required", challenge
            if not needed & key.scopes:
                wanted = " or ".join(sorted(needed))
                return 403, "Authorization", f"this key lacks the scope {wanted}", {}
            scope.setdefault("state", {})["api_key_name"] = key.name
        correlation_id = headers.get("correlation-id")
        if correlation_id is not None and (problem := correlation_id_problem(correlation_id)):
            return 422, "Correlation-ID", problem, {}
        # The HTTP parser lets control characters through to here (see LenientHeaders in
        # api.py), so that a bad Correlation-ID is named; any other header carrying them ends
        # the request here, before the app sees it.
        for name, value in headers.items():
            if _CONTROL.search(value.replace("\t", "")):
                return 400, name, "control characters are not allowed", {"Connection": "close"}
        return None

    async def _call_with_body_limit(self, scope: Scope, receive: Receive, send: Send) -> None:
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await _answer(send, 413, "body", f"at most {MAX_BODY_BYTES} bytes")


async def _answer(
    send: Send, status: int, field: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"errors": [{"field": field, "message": message}]}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

"""`DoorGuard`: the ASGI middleware every route sits behind. In order:

1. who the client is (`proxies`: the peer, or whom a trusted proxy forwards);
2. cross-site and rebinding (`cross_site`): `Host` -> 400, `Origin` -> 403, `Content-Type` -> 415;
3. access (`keys`, `scopes`, `tenants`): no key or an unknown one -> 401, a key without the
   route's scope -> 403, a tenant's key on a fleet-wide page -> 403; without `API_KEYS`,
   loopback clients only;
4. limits (`limits`): `Correlation-ID` -> 422, a body over 64 KiB -> 413 as it streams in.

It answers every refusal itself, in the door's `{"errors": [{"field", "message"}]}` shape,
before the application reads anything of the body. What it learnt (the key's fingerprint, its
tenant) is left in `request.state` for the routes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from vip_bundles.guard import cross_site, limits, proxies, tenants
from vip_bundles.guard.keys import ApiKey, authenticate, presented_key
from vip_bundles.guard.scopes import required_scopes

CHALLENGE = 'Bearer realm="vip-bundles", Basic realm="vip-bundles"'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Refusal = tuple[int, str, str, dict[str, str]]  # status, field, message, extra headers


@dataclass(frozen=True)
class GuardConfig:
    keys: list[ApiKey]
    hosts: frozenset[str]  # host names the door serves
    origins: frozenset[cross_site.Origin]  # origins besides its own that may POST
    trusted_proxies: tuple[proxies.Network, ...]


class DoorGuard:
    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self._find_client(scope, headers)
        refusal = (
            self._cross_site(scope, headers)
            or self._access(scope, headers)
            or self._limits(headers)
        )
        if refusal is not None:
            await _answer(send, *refusal)
            return
        await self._call_with_body_limit(scope, receive, send)

    def _find_client(self, scope: Scope, headers: dict[str, str]) -> None:
        peer = scope.get("client")
        client = proxies.client_of(
            peer[0] if peer else None, scope["scheme"], headers, self.config.trusted_proxies
        )
        if peer and client.host != peer[0]:
            scope["client"] = (client.host, 0)  # the access log names the client too
        scope["scheme"] = client.scheme

    def _cross_site(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        method = scope["method"]
        if problem := cross_site.host_problem(headers.get("host"), self.config.hosts):
            return 400, "Host", problem, {}
        if problem := cross_site.origin_problem(
            method, headers, scope["scheme"], self.config.origins
        ):
            return 403, "Origin", problem, {}
        if problem := cross_site.content_type_problem(method, headers):
            return 415, "Content-Type", problem, {}
        return None

    def _access(self, scope: Scope, headers: dict[str, str]) -> Refusal | None:
        method, path = scope["method"], scope["path"]
        state = scope.setdefault("state", {})
        if not self.config.keys:
            client = scope.get("client")
            if not proxies.is_loopback(client[0] if client else None):
                return 403, "client", "no API_KEYS set: this door serves loopback only", {}
            state["api_key_name"] = "local"
            return None
        needed = required_scopes(method, path)
        if not needed:
            return None
        key = authenticate(presented_key(headers.get("authorization")), self.config.keys)
        if key is None:
            challenge = {"WWW-Authenticate": CHALLENGE}
            return 401, "Authorization", "a valid API key is required", challenge
        if not needed & key.scopes:
            wanted = " or ".join(sorted(needed))
            return 403, "Authorization", f"this key lacks the scope {wanted}", {}
        if key.tenant is not None and tenants.fleet_wide(method, path):
            return 403, "Authorization", tenants.FLEET_ONLY, {}
        state["api_key_name"] = key.name
        state["tenant"] = key.tenant
        return None

    def _limits(self, headers: dict[str, str]) -> Refusal | None:
        correlation_id = headers.get("correlation-id")
        if correlation_id is not None and (
            problem := limits.correlation_id_problem(correlation_id)
        ):
            return 422, "Correlation-ID", problem, {}
        if limits.declared_too_large(headers.get("content-length")):
            return 413, "body", f"at most {limits.MAX_BODY_BYTES} bytes", {}
        return None

    async def _call_with_body_limit(self, scope: Scope, receive: Receive, send: Send) -> None:
        received, started = 0, False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limits.MAX_BODY_BYTES:
                raise limits.BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except limits.BodyTooLarge:
            if started:
                raise
            await _answer(send, 413, "body", f"at most {limits.MAX_BODY_BYTES} bytes")


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

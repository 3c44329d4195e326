"""The HTTP door (shared/intake-api.md, door 2): the app assembled, and `vip-bundles api`.

Routes: `vip_bundles/http/bundles.py` (intake, bundles, cancel, resume) and
`vip_bundles/http/operator.py` (console, /metrics, /health); every error in one shape:
`vip_bundles/http/errors.py`; who may call what, and what the door will read:
`vip_bundles/guard/`. Nothing here talks to Redis or the broker until a request comes.

The HTTP parser is uvicorn's, strict as shipped: a request it refuses (control characters in
a header, conflicting `Content-Length`/`Transfer-Encoding`, bad framing) gets its own 400. It is
never loosened to name a field: that is how requests get smuggled past a proxy.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn
from fastapi import FastAPI

from adapters import telemetry
from adapters.settings import get_settings
from vip_bundles.guard import DoorGuard, GuardConfig
from vip_bundles.guard.cross_site import allowed_hosts, allowed_origins
from vip_bundles.guard.keys import parse_api_keys
from vip_bundles.guard.proxies import is_loopback, parse_trusted_proxies
from vip_bundles.http import bundles, operator
from vip_bundles.http.errors import install_error_handlers

log = logging.getLogger(__name__)

# How uvicorn serves the door, here and in the tests' in-process server. The client's address
# behind a proxy is the guard's business (vip_bundles/guard/proxies.py): uvicorn's
# proxy_headers (on by default, trusting 127.0.0.1) would make X-Forwarded-For decide first.
SERVER_OPTIONS: dict[str, Any] = {"proxy_headers": False, "http": "auto"}


def guard_config(api_keys: str | None = None, listen_host: str | None = None) -> GuardConfig:
    """The guard's settings from the environment (`api_keys` in place of `API_KEYS`); a bad
    one is a ValueError saying which."""
    s = get_settings()
    keys = api_keys if api_keys is not None else configured_api_keys()
    return GuardConfig(
        keys=parse_api_keys(keys),
        hosts=allowed_hosts(s.allowed_hosts, listen_host),
        origins=allowed_origins(s.allowed_origins),
        trusted_proxies=parse_trusted_proxies(s.trusted_proxies),
    )


def create_app(api_keys: str | None = None, listen_host: str | None = None) -> FastAPI:
    """The HTTP door. No I/O here: Redis and the broker are reached on the first request.

    `api_keys` (default: the `API_KEYS` setting) grants access; `listen_host` is one of the
    hosts it serves when `ALLOWED_HOSTS` is not set (see vip_bundles/guard/).
    """
    # /docs and /redoc load their assets from a CDN; the OpenAPI document itself is served.
    app = FastAPI(title="vip-bundles", version="1", docs_url=None, redoc_url=None)
    install_error_handlers(app)
    app.add_middleware(DoorGuard, config=guard_config(api_keys, listen_host))
    app.include_router(bundles.router)
    app.include_router(operator.router)
    if telemetry.tracing():
        # Outermost, so the request's span holds the guard's work too; a caller's
        # `traceparent` is continued.
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app.add_middleware(
            OpenTelemetryMiddleware,
            server_request_hook=_no_query,
            default_span_details=_span_name,
            exclude_spans=["receive", "send"],
        )
    return app


def _span_name(scope: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    # The route, not the path: one span name for every bundle (`/vip-bundles/{id}/cancel`).
    parts = scope.get("path", "").split("/")
    if len(parts) > 2 and parts[1] == "vip-bundles":
        parts[2] = "{vip_bundle_id}"
    return f"{scope.get('method', 'HTTP')} {'/'.join(parts)}", {}


def _no_query(span: Any, scope: dict[str, Any]) -> None:
    # A search's text (an e-mail) never reaches the span: the instrumentation records the
    # target with its query, so it is set again with the search hidden.
    query = scope.get("query_string", b"").decode("latin-1")
    if query and span.is_recording():
        target = telemetry.without_search(f"{scope.get('path', '')}?{query}")
        span.set_attribute("http.url", target)
        span.set_attribute("http.target", target)
        span.set_attribute("url.query", target.partition("?")[2])


def configured_api_keys() -> str | None:
    secret = get_settings().api_keys
    return secret.get_secret_value() if secret is not None else None


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP door in the foreground (`vip-bundles api`).

    Refuses (ValueError, saying why) to listen beyond loopback without API_KEYS, and bad
    API_KEYS (a key under 32 characters, ...), ALLOWED_ORIGINS or TRUSTED_PROXIES.
    """
    telemetry.setup_logging()  # LOG_FORMAT; the access log never shows a query string
    config = guard_config(listen_host=host)
    if not config.keys and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host} without API_KEYS: anyone who can reach it could book "
            "and read bundles. Set API_KEYS (see the README's production section) or serve "
            "on 127.0.0.1."
        )
    if not get_settings().allowed_hosts and host in ("0.0.0.0", "::", ""):
        log.warning(
            "serving on %s without ALLOWED_HOSTS: only requests for %s are answered (others "
            "get 400 naming Host); set ALLOWED_HOSTS to the names callers use",
            host,
            ", ".join(sorted(config.hosts)),
        )
    telemetry.setup_tracing("api")
    app = create_app(listen_host=host)
    # Every connection tried once before serving: a wrong CA or password stops the door here,
    # in one line (ConnectionCheckFailed), not on every request after.
    from tasks.connections import check_connections

    check_connections()
    # LOG_FORMAT=json: uvicorn's loggers go to the root logger's JSON handler.
    log_config = None if telemetry.json_logs() else uvicorn.config.LOGGING_CONFIG
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", log_config=log_config, **SERVER_OPTIONS
    )
    uvicorn.Server(config).run()

"""Every connection of a process, tried once at start (adapters/connection_check.py).

Workers and beat check from their init signals and exit 1 with one line on stderr; the HTTP
door and the CLI call `check_connections` and print the line themselves. A server that only
refuses connections (not up yet, restarting) is not a configuration error: Celery's own
retries on start-up wait for it, as before.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from celery.beat import Service
from celery.signals import beat_init, worker_init
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters import redis_connection
from adapters.connection_check import (
    ConnectionCheckFailed,
    check,
    probe_archive,
    probe_https,
    probe_redis,
)
from adapters.settings import Settings, get_settings
from tasks.celery_app import app, partner_tls

log = logging.getLogger(__name__)


def secrets(s: Settings) -> list[str]:
    """Values that must never appear in a message (URL passwords are masked anyway)."""
    found = [v.get_secret_value() for v in (s.api_keys, s.redis_sentinel_password) if v]
    if s.archive_url is not None:
        found.append(s.archive_url.get_secret_value())
    return found


def _which(setting: str | None, name: str) -> str:
    return name if setting else "REDIS_URL"


def check_connections(broker: bool = True, partners: bool = False) -> None:
    """Redis (state), the broker, the result backend and the archive: each authenticated and
    verified once. Raises ConnectionCheckFailed naming the first that fails."""
    s = get_settings()
    hidden = secrets(s)
    clients = redis_connection.check_clients(s)
    try:
        for name, client in clients:
            if "Sentinel " in name:  # a sentinel: is it there, does it take our TLS and password
                _try(name, client.ping, hidden)
            else:
                _try(name, probe_redis(client, s.key_prefix), hidden)
    finally:
        for _, client in clients:
            client.close()
    if broker:
        _try(f"broker ({_which(s.broker_url, 'BROKER_URL')})", _probe_broker, hidden)
    backend = app.backend
    if hasattr(backend, "client"):  # Redis (or Sentinel) result backend
        _try(
            f"result backend ({_which(s.result_backend, 'RESULT_BACKEND')})",
            backend.client.ping,
            hidden,
        )
    if s.archive_url is not None:
        _try("archive (ARCHIVE_URL)", probe_archive(s.archive_url.get_secret_value()), hidden)
    if partners and s.gateway_url.startswith("https://"):
        _try("partners (GATEWAY_URL)", probe_https(s.gateway_url, partner_tls()), hidden)


def _probe_broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)


def _try(what: str, probe: Callable[[], object], hidden: list[str]) -> None:
    try:
        check(what, probe, hidden)
    except ConnectionCheckFailed as exc:
        if refused(exc.__context__):
            log.warning("%s (will keep trying)", exc)
            return
        raise


def refused(exc: BaseException | None) -> bool:
    """Nothing answering (yet): a refused, unreachable or timed-out connection, not a TLS or
    authentication failure. Such a server is waited for, as before this check."""
    while exc is not None:
        if isinstance(exc, (ConnectionRefusedError, TimeoutError, RedisTimeoutError)) or (
            isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH)
        ):
            return True
        if any(text in str(exc) for text in ("Connection refused", "Error 111 ", "timed out")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@worker_init.connect
@beat_init.connect
def _check_at_start(sender: object = None, **_: object) -> None:
    try:
        # Workers call the partners; beat does not.
        check_connections(partners=not isinstance(sender, Service))
    except ConnectionCheckFailed as exc:
        # Straight to stderr (Celery may have redirected sys.stderr to its log) and out: a
        # misconfigured connection is not retried until someone notices.
        os.write(2, f"vip-bundles: cannot start: {exc}\n".encode())
        os._exit(1)

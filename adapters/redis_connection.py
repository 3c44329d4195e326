"""Every Redis connection of every process is made here: to REDIS_URL, or to the master that
Redis Sentinel names (REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD).

With sentinels, a connection asks them for the current master each time it connects, and every
command retries connection errors, timeouts and READONLY replies (a master demoted to replica)
with capped backoff for `REDIS_FAILOVER_WAIT_S`: a failover looks like a slow command, not an
error, and no process needs a restart. redis-py's pool drops its connections to a master that is
no longer the master, and a Lua script the new master does not know is loaded again by
`Script.__call__` (NOSCRIPT). A retried transition script is safe: it is version-checked, so a
write whose reply was lost is not applied twice (adapters/store.py recognises it as its own).

Celery (broker, result backend) gets the same sentinels in its own form, `sentinel://` URLs
with `master_name` in the transport options: the same settings a Door 1 caller uses.

TLS: with a `rediss://` REDIS_URL, its `ssl_*` parameters (CA, client certificate) serve the
master's connections and, unless REDIS_SENTINEL_TLS=false, the sentinels' too (redis-py's
`sentinel_kwargs`; Celery's `broker_use_ssl` and `redis_backend_use_ssl`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from redis import Redis
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

if TYPE_CHECKING:
    from adapters.settings import Settings

# Backoff between tries during a failover: 50 ms doubling up to this cap.
RETRY_CAP_S = 0.5
# A dead peer must not hang a call: connects and replies are bounded (WAIT's own timeout is
# far below it).
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2.0
SENTINEL_TIMEOUT_S = 0.5
FAILOVER_ERRORS = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


class NotReplicated(RedisError):
    """No replica acknowledged a write in time: what it would confirm is not yet safe from a
    failover, so it is not confirmed (the HTTP door answers 503, the Celery door raises; the
    same request sent again is idempotent)."""


class MasterConnection(SentinelManagedConnection):
    """A connection to the master Sentinel names, also when it reconnects mid-command.

    redis-py (8.1) reconnects a connection that broke in the middle of a command through
    `Connection.send_packed_command` -> `connect_check_health`, to the address it had, not
    through `connect()`, which asks the sentinels: a call in flight when the master died would
    retry the dead master until its retries ran out (~REDIS_FAILOVER_WAIT_S, for each try).
    Ask the sentinels first here too; a failed connect is retried by the command's retry.
    """

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=False)


class MasterSSLConnection(MasterConnection, SSLConnection):
    pass


def redis_client(settings: Settings) -> Redis:
    """A client of the state store (and of metrics, the HTTP door, the CLI)."""
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, health_check_interval=30)
    return sentinel(settings).master_for(
        settings.redis_sentinel_master,
        redis_class=Redis,
        retry=failover_retry(settings),
        **_master_kwargs(settings.redis_url),
    )


def check_clients(settings: Settings) -> list[tuple[str, Redis]]:
    """Clients for the check at start (adapters/connection_check.py), each named, that try
    once: a bad certificate or password is an answer, not something to wait out. With
    Sentinel, the sentinels first, then the master they name."""
    once = Retry(ExponentialBackoff(), 0)
    if not settings.redis_sentinels:
        return [("Redis (REDIS_URL)", Redis.from_url(settings.redis_url, retry=once))]
    found = sentinel(settings)
    master = found.master_for(
        settings.redis_sentinel_master,
        redis_class=Redis,
        retry=once,
        **_master_kwargs(settings.redis_url),
    )
    return [
        *(
            (
                f"Redis Sentinel {s.connection_pool.connection_kwargs['host']}:"
                f"{s.connection_pool.connection_kwargs['port']} (REDIS_SENTINELS)",
                s,
            )
            for s in found.sentinels
        ),
        ("Redis (REDIS_URL, Sentinel)", master),
    ]


def sentinel_managed(client: Redis) -> bool:
    """Whether the client finds its master through sentinels."""
    return isinstance(client.connection_pool, SentinelConnectionPool)


def follow_master(client: Redis) -> None:
    """Ask the sentinels who the master is now (a no-op without them). A master just demoted
    by a failover still takes writes until the sentinels reconfigure it, and those writes are
    lost when it resyncs as a replica: the pool drops its connections to a former master (idle
    ones now, busy ones when released), so what follows runs on the master the sentinels name.
    """
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.get_master_address()


def sentinel(settings: Settings) -> Sentinel:
    """The sentinels, for finding the master (and for tests and operators asking who it is)."""
    password = settings.redis_sentinel_password
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if password is not None:
        sentinel_kwargs["password"] = password.get_secret_value()
    sentinel_kwargs.update(sentinel_tls(settings))
    return Sentinel(settings.sentinel_addresses, sentinel_kwargs=sentinel_kwargs)


def tls_params(redis_url: str) -> dict[str, Any]:
    """The `ssl_*` parameters of a `rediss://` URL ({} for redis://), as redis-py reads them."""
    if not redis_url.startswith("rediss://"):
        return {}
    return {k: v for k, v in parse_url(redis_url).items() if k.startswith("ssl_")}


def sentinel_tls(settings: Settings) -> dict[str, Any]:
    """redis-py's `sentinel_kwargs` for TLS to the sentinels: REDIS_URL's, unless
    REDIS_SENTINEL_TLS says otherwise."""
    params = tls_params(settings.redis_url)
    enabled = settings.redis_sentinel_tls
    if enabled is None:
        enabled = bool(params) or settings.redis_url.startswith("rediss://")
    return {"ssl": True, **params} if enabled else {}


def failover_retry(settings: Settings) -> Retry:
    """Retries that outlast a failover: backoff 50 ms doubling to RETRY_CAP_S, for about
    REDIS_FAILOVER_WAIT_S in all."""
    tries = math.ceil(settings.redis_failover_wait_s / RETRY_CAP_S) + 4
    return Retry(
        ExponentialBackoff(cap=RETRY_CAP_S, base=0.05), tries, supported_errors=FAILOVER_ERRORS
    )


def _master_kwargs(redis_url: str) -> dict[str, Any]:
    """The database number, credentials and TLS of REDIS_URL, for the master's connections."""
    parsed = parse_url(redis_url)
    kwargs: dict[str, Any] = {
        "db": int(parsed.get("db") or 0),
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": 30,
    }
    for key in ("username", "password"):
        if parsed.get(key):
            kwargs[key] = parsed[key]
    tls = redis_url.startswith("rediss://")
    kwargs["connection_class"] = MasterSSLConnection if tls else MasterConnection
    kwargs.update(tls_params(redis_url))
    return kwargs


# --- Celery's form of the same ------------------------------------------------------------------


def celery_sentinel_url(settings: Settings) -> str:
    """`sentinel://[:password@]h1:p1/DB;sentinel://...` for Celery's broker and result backend.

    The database number goes on every address: kombu and Celery read it (and the password)
    from the first one only, so `sentinel://h1:p1;sentinel://h2:p2/3` would mean database 0.
    """
    master = _master_kwargs(settings.redis_url)  # TLS: not in this URL form (celery_use_ssl)
    auth = ""
    if "password" in master:
        user = quote(master.get("username", ""), safe="")
        auth = f"{user}:{quote(master['password'], safe='')}@"
    db = master["db"]
    return ";".join(
        f"sentinel://{auth}{_host(host)}:{port}/{db}" for host, port in settings.sentinel_addresses
    )


def celery_transport_options(settings: Settings) -> dict[str, Any]:
    """The transport options Celery's Sentinel support needs (broker and result backend)."""
    options: dict[str, Any] = {"master_name": settings.redis_sentinel_master}
    sentinel_kwargs = sentinel_tls(settings)
    password = settings.redis_sentinel_password
    if password is not None:
        sentinel_kwargs["password"] = password.get_secret_value()
    if sentinel_kwargs:
        options["sentinel_kwargs"] = sentinel_kwargs
    return options


def celery_use_ssl(settings: Settings) -> dict[str, Any] | None:
    """`broker_use_ssl` and `redis_backend_use_ssl` for the master's connections on Sentinel
    (a `sentinel://` URL carries no TLS parameters); None without TLS."""
    return tls_params(settings.redis_url) or None


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_sentinel_url(url: str) -> bool:
    return url.startswith("sentinel://")

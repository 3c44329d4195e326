"""All configuration, from the environment, in one place (read once per process)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from adapters.partner_gate import parse_rate_limits

# Settings that hold a secret (a password in a URL, keys): each may also be given as
# `<NAME>_FILE`, the path of a file holding it (Docker and Kubernetes secrets), read at start.
SECRET_SETTINGS = (
    "redis_url",
    "broker_url",
    "result_backend",
    "archive_url",
    "api_keys",
    "redis_sentinel_password",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    # State, events and (by default) the Celery broker and result backend live in Redis.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # e.g. amqp://guest:guest@127.0.0.1:5672// ; default REDIS_URL
    result_backend: str | None = None  # default REDIS_URL
    # On RabbitMQ: "quorum" declares the queues as quorum queues (replicated, for a RabbitMQ
    # cluster); "classic" keeps RabbitMQ's default. Callers must declare the same type.
    broker_queue_type: Literal["classic", "quorum"] = "classic"
    # Bundle state and the events stream live under it. The broker's queues and the results do
    # not: they keep the contract's names (deployments sharing a Redis use a database each).
    key_prefix: str = "vip-bundles:"
    # High availability: `host:port,host:port,...` of Redis Sentinels. Every Redis connection
    # (state, results, the broker unless BROKER_URL names another) then asks them for the
    # master named REDIS_SENTINEL_MASTER; the database number and password stay in REDIS_URL.
    redis_sentinels: str | None = None
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None  # when the sentinels ask for one
    # TLS to the sentinels: default, as REDIS_URL (rediss:// -> yes, with its ssl_* params).
    redis_sentinel_tls: bool | None = None
    # How long a Redis command keeps retrying (with backoff) through a failover before it
    # fails: longer than the sentinels' down-after-milliseconds plus their election.
    redis_failover_wait_s: float = Field(default=30.0, gt=0)
    # The answer of a booking or a cancel waits at most this long for a replica to have the
    # write it confirms (Redis WAIT), when the master has a replica; else it is not given.
    replica_ack_timeout_s: float = Field(default=2.0, gt=0)
    events_stream_maxlen: int = 1_000_000

    # The HTTP door's keys, `key:scope+scope[@tenant],...` (vip_bundles/guard/). Secret: never
    # shown in a repr or a log line.
    api_keys: SecretStr | None = None
    # What else the HTTP door checks (vip_bundles/guard/): the hosts it serves (default: where
    # it listens, localhost, 127.0.0.1, [::1]), other origins whose pages may POST to it, and
    # the proxies whose X-Forwarded-For / Forwarded it believes (default: none).
    allowed_hosts: str | None = None
    allowed_origins: str | None = None
    trusted_proxies: str | None = None

    gateway_url: str = "http://127.0.0.1:8888"
    http_timeout_s: float = 5.0
    # In-process retries (tenacity) of one partner call on 5xx, timeouts and connection errors.
    http_retry_attempts: int = Field(default=5, ge=1)
    http_retry_max_wait_s: float = 2.0
    # Compensations wait longer: an undo must get through if the partner comes back at all.
    compensation_retry_attempts: int = Field(default=8, ge=1)
    # Total time one partner call may take over all its tries (each try's timeout is cut to
    # what is left): what bounds a step on a `-P threads` pool, where Celery's time limits are
    # not enforced. Forward steps, then undo steps.
    http_call_deadline_s: float = Field(default=15.0, gt=0)
    compensation_call_deadline_s: float = Field(default=60.0, gt=0)

    # A forward step gives up (and the bundle rolls back, saying so) only when the bundle is
    # this old and still not booked: time spent waiting on a partner (its Retry-After, an
    # outage, the quota) counts, the waits burn no attempt. 15 minutes rides out a partner's
    # outage of several minutes and a long Retry-After, and still answers a customer while the
    # prices and seats they were shown hold.
    booking_deadline_s: float = Field(default=900.0, gt=0)
    # A step whose worker died mid-task this many times over (2 x, the start count in Redis)
    # is given up at once: a poison message must not loop until the deadline.
    max_step_attempts: int = Field(default=5, ge=1)

    # Back-pressure (shared/partners-api.md): the fleet's quota per partner,
    # `<prefix>=<calls per second>[,...]` (e.g. `transportation-api=10,payments-api=50`);
    # the circuit breaker (opens after this many transient failures in a row, fleet-wide;
    # then one probe per interval, doubling up to the cap); and what a missing or malformed
    # Retry-After means, and the most any is believed.
    partner_rate_limits: str | None = None
    partner_breaker_failures: int = Field(default=5, ge=1)
    partner_breaker_open_s: float = Field(default=1.0, gt=0)
    partner_breaker_max_open_s: float = Field(default=10.0, gt=0)
    retry_after_default_s: float = Field(default=1.0, gt=0)
    retry_after_max_s: float = Field(default=300.0, gt=0)
    # The reconciler (celery beat) resumes a bundle with no transition for this long.
    stale_after_s: float = 120.0
    reconcile_every_s: float = 30.0
    # A parked (compensation_failed) bundle is retried after base * 2**failures, capped.
    parked_retry_base_s: float = 30.0
    parked_retry_max_s: float = 1800.0

    # The audit against the partners' records (tasks/audit.py): beat runs it this often over
    # the bundles settled since its last run plus those settled within the re-audit window,
    # at most `audit_batch` of each per run.
    audit_every_s: float = 300.0
    audit_window_s: float = 3600.0
    audit_batch: int = Field(default=5000, ge=1)
    # Up to this many partner calls, an audit asks for just its bundles' records (the lists'
    # courtesy filters); beyond it, it fetches each whole list once. 0: always whole lists.
    audit_filtered_calls: int = Field(default=20, ge=0)

    # Retention (adapters/archiver.py): a settled bundle stays in Redis this long after it
    # settled, then beat moves it to the PostgreSQL archive at ARCHIVE_URL, at most
    # `archive_batch` per transaction, every `archive_every_s`. Without ARCHIVE_URL nothing
    # leaves Redis.
    archive_url: SecretStr | None = None
    retention_s: float = Field(default=7 * 24 * 3600, ge=0)
    archive_every_s: float = Field(default=300.0, gt=0)
    archive_batch: int = Field(default=1000, ge=1)

    # Celery task events from the start (Flower turns them on in running workers anyway).
    task_events: bool = False

    # At-least-once delivery on Redis: unacked messages come back after this long, so it must be
    # longer than any task's run, countdown or ETA (celery-notes.md).
    visibility_timeout_s: int = 3600
    task_time_limit_s: int = 300
    result_expires_s: int = 7 * 24 * 3600

    # The operator's console links to Flower here.
    flower_url: str = "http://127.0.0.1:5555"
    # How often the console refreshes its numbers (from /dashboard.json).
    console_refresh_s: float = Field(default=5.0, gt=0)

    @field_validator("partner_rate_limits")
    @classmethod
    def _rate_limits_are_known_partners(cls, value: str | None) -> str | None:
        parse_rate_limits(value)  # a malformed entry or unknown prefix is refused, named
        return value

    @property
    def rate_limits(self) -> dict[str, float]:
        return parse_rate_limits(self.partner_rate_limits)

    # Partners over HTTPS with a private CA, and a client certificate (mTLS) where a partner asks
    # for one: PEM files. Without PARTNER_CA_FILE the system's CAs (or SSL_CERT_FILE) are used.
    partner_ca_file: Path | None = None
    partner_cert_file: Path | None = None
    partner_key_file: Path | None = None
    # The AMQP broker over TLS (amqps://) with a private CA and, if it asks, a client
    # certificate: Celery's `broker_use_ssl`. Without them amqps:// trusts the system's CAs.
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SecretFiles(settings_cls))

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _rediss_verifies_by_default(cls, value: str | None) -> str | None:
        return verified_rediss(value) if value else value

    @model_validator(mode="after")
    def _client_cert_and_key_together(self) -> Settings:
        for name in ("partner", "broker"):
            cert, key = getattr(self, f"{name}_cert_file"), getattr(self, f"{name}_key_file")
            if bool(cert) != bool(key):
                who = name.upper()
                raise ValueError(f"{who}_CERT_FILE and {who}_KEY_FILE: give both or neither")
        return self

    # Traces (adapters/telemetry.py; set up by the OTEL_* variables): the timeline page and
    # `vip-bundles status` link a bundle's trace here, e.g.
    # `https://grafana.example/explore?traceId={trace_id}`. Log lines: LOG_FORMAT=json for
    # one JSON object a line (read by adapters/telemetry.py itself, before settings load).
    trace_url_template: str | None = None

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_host_ports(cls, value: str | None) -> str | None:
        if value is not None:
            host_ports(value)  # a malformed entry is refused at start, naming the variable
        return value

    @model_validator(mode="after")
    def _sentinels_need_a_master(self) -> Settings:
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            missing = "REDIS_SENTINEL_MASTER" if self.redis_sentinels else "REDIS_SENTINELS"
            raise ValueError(f"{missing}: required with the other one (Redis Sentinel)")
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; [] without Sentinel."""
        return host_ports(self.redis_sentinels or "")

    @field_validator("archive_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def broker(self) -> str:
        """The broker's URL as configured; with sentinels and no BROKER_URL, celeryconfig
        turns REDIS_URL into Celery's own Sentinel URL (adapters/redis_connection.py)."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.redis_url


def host_ports(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` (IPv6 hosts in brackets) as (host, port) pairs."""
    pairs = []
    for entry in filter(None, (e.strip() for e in value.split(","))):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"REDIS_SENTINELS: {entry!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def verified_rediss(url: str) -> str:
    """A `rediss://` URL without `ssl_cert_reqs` gets `ssl_cert_reqs=required`: the server's
    certificate is verified (against `ssl_ca_certs`, else the system's CAs), as redis-py does
    by default, where Celery would refuse the URL. An explicit value is kept as written."""
    if not url.startswith("rediss://"):
        return url
    query = urlsplit(url).query
    if any(name == "ssl_cert_reqs" for name, _ in parse_qsl(query)):
        return url
    return f"{url}{'&' if query else '?'}ssl_cert_reqs=required"


class SecretFiles(PydanticBaseSettingsSource):
    """`<NAME>_FILE` for every secret setting: the file's content (one trailing newline cut).
    Giving both `<NAME>` and `<NAME>_FILE` is refused, naming them; so is an unreadable file,
    naming the variable and the path, never the content."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # all the work is in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in SECRET_SETTINGS:
            env = name.upper()
            path = os.environ.get(f"{env}_FILE")
            if not path:
                continue
            if os.environ.get(env):
                raise ValueError(f"{env} and {env}_FILE are both set: give one")
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"{env}_FILE: cannot read {path}: {exc.strerror}") from None
            found[name] = text.removesuffix("\n").removesuffix("\r")
        return found


class SettingsError(ValueError):
    """A setting the process cannot start with: one line naming each variable and what is
    wrong with it, never its value (it may hold a password)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(settings_problems(exc)) from None


def settings_problems(exc: ValidationError) -> str:
    """`PARTNER_RATE_LIMITS: unknown partner 'flights' (...); HTTP_TIMEOUT_S: ...`."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(message if message.startswith(f"{name}:") else f"{name}: {message}")
    return "; ".join(problems)

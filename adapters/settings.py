"""All configuration, from the environment, in one place (read once per process)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    # State, events and (by default) the Celery broker and result backend live in Redis.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = None  # e.g. amqp://guest:guest@127.0.0.1:5672// ; default REDIS_URL
    result_backend: str | None = None  # default REDIS_URL
    # Bundle state and the events stream live under it. The broker's queues and the results do
    # not: they keep the contract's names (deployments sharing a Redis use a database each).
    key_prefix: str = "vip-bundles:"
    events_stream_maxlen: int = 1_000_000

    # The HTTP door's keys, `key:scope+scope,...` (vip_bundles/access.py). Secret: never shown
    # in a repr or a log line.
    api_keys: SecretStr | None = None

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

    # Forward steps that keep failing for technical reasons are re-dispatched by the
    # reconciler; after this many failed attempts the saga gives up and rolls back.
    max_step_attempts: int = Field(default=5, ge=1)
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

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        return self.result_backend or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""The Celery app and the per-process clients every task uses.

Clients are made on first use in each worker process (and made anew after a fork), never at
import time, so importing the tasks needs no Redis and no network.
"""

from __future__ import annotations

import gc
import logging
import os
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from redis import Redis

from adapters import redis_connection, telemetry, tls
from adapters.deferred import DeferredSteps
from adapters.metrics import METER
from adapters.partner_gate import BreakerPolicy, PartnerGate
from adapters.partner_policy import RetryAfterPolicy
from adapters.partners import Partners
from adapters.settings import get_settings
from adapters.store import BundleStore
from tasks.schema_guard import SchemaGuardedTask

# One INFO line per partner request is noise at this rate; failures are logged by the steps.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Every task checks the schema version of what it reads first (tasks/schema_guard.py).
# Importing it also stamps the version on every message this process sends.
app = Celery("vip_bundles", task_cls=SchemaGuardedTask)
app.config_from_object("celeryconfig")


@cache
def redis_client() -> Redis:
    """The state store's client: REDIS_URL's server, or the master Sentinel names."""
    return redis_connection.redis_client(get_settings())


@cache
def store() -> BundleStore:
    s = get_settings()
    return BundleStore(redis_client(), prefix=s.key_prefix, stream_maxlen=s.events_stream_maxlen)


@cache
def partner_gate() -> PartnerGate:
    """The fleet's view of each partner (Retry-After, circuit, quota), shared through Redis."""
    s = get_settings()
    breaker = BreakerPolicy(
        s.partner_breaker_failures, s.partner_breaker_open_s, s.partner_breaker_max_open_s
    )
    # When a partner's circuit closes, the steps waiting on it are due at once.
    wake = deferred_steps().wake
    return PartnerGate(redis_client(), s.key_prefix, s.rate_limits, breaker, on_close=wake)


@cache
def deferred_steps() -> DeferredSteps:
    """Bundles whose next step waits on a partner (released by every worker's releaser)."""
    return DeferredSteps(redis_client(), get_settings().key_prefix)


def _partners(attempts: int, deadline_s: float, undo: bool) -> Partners:
    s = get_settings()
    return Partners(
        s.gateway_url,
        s.http_timeout_s,
        attempts,
        s.http_retry_max_wait_s,
        deadline_s=deadline_s,
        gate=partner_gate(),
        undo=undo,
        retry_after=RetryAfterPolicy(s.retry_after_default_s, s.retry_after_max_s),
        verify=partner_tls(),
    )


@cache
def partners() -> Partners:
    """For forward steps: a few quick retries, then the step fails and the saga decides."""
    s = get_settings()
    return _partners(s.http_retry_attempts, s.http_call_deadline_s, undo=False)


@cache
def compensation_partners() -> Partners:
    """For undo steps: more retries, since an undo must get through if it can at all; they
    also go first when a partner's quota is scarce."""
    s = get_settings()
    return _partners(s.compensation_retry_attempts, s.compensation_call_deadline_s, undo=True)


@cache
def partner_tls() -> ssl.SSLContext | None:
    """The partners' private CA and this service's client certificate (PARTNER_*_FILE)."""
    s = get_settings()
    return tls.client_context(s.partner_ca_file, s.partner_cert_file, s.partner_key_file)


@worker_init.connect
def _send_metrics_to_redis(**_: object) -> None:
    # Workers sum their metrics in memory and send them to Redis in batches
    # (adapters/metrics.py); other processes (the API, the CLI, tests) send none.
    METER.configure(lambda: (redis_client(), get_settings().key_prefix))


@cache
def io_pool() -> ThreadPoolExecutor:
    """Threads for the independent partner calls of one undo (a refund and its receipt's void,
    the tickets of one leg): side by side, an undo waits for its slowest call, not their sum."""
    # Shared by every task thread of a `-P threads` process: sized for many undos at once
    # (threads are only started as calls need them).
    # (With tracing on, its calls carry their task's trace context.)
    return telemetry.thread_pool(max_workers=64, thread_name_prefix="vip-bundles-io")


_CLIENTS = (
    redis_client,
    store,
    deferred_steps,
    partner_gate,
    partners,
    compensation_partners,
    io_pool,
)


@worker_process_init.connect
def _fresh_clients_after_fork(**_: object) -> None:
    # Sockets must not be shared with the parent process across a fork.
    for getter in _CLIENTS:
        getter.cache_clear()
    _freeze_long_lived_objects()


_made_in_pid = 0  # the process whose clients `_make_clients_once` made
_making = threading.Lock()


@task_prerun.connect
def _make_clients_once(**_: object) -> None:
    # `functools.cache` may run a getter twice when two threads of a `-P threads` pool ask at
    # once (two clients, two connection pools): the first task of a process makes them all,
    # under a lock, before its threads share them. Prefork children redo it after the fork.
    global _made_in_pid
    if _made_in_pid != os.getpid():
        with _making:
            if _made_in_pid != os.getpid():
                for getter in _CLIENTS:
                    getter()
                _made_in_pid = os.getpid()


@worker_ready.connect  # sent by `celery worker` only (not by in-process test workers)
def _freeze_in_main_process(**_: object) -> None:
    _freeze_long_lived_objects()


@task_postrun.connect
def _freeze_after_first_task(**_: object) -> None:
    # The first task makes the process's clients and connection pools (and pydantic's lazily
    # built validators): they live as long as the process too.
    if _gc_frozen == 1:
        _freeze_long_lived_objects()


_gc_frozen = 0  # times this process froze (0: not a `celery worker` process)


def _freeze_long_lived_objects() -> None:
    """Move what start-up made (Celery, kombu, pydantic's schemas: ~70,000 objects that live as
    long as the process) out of the cycle collector's reach. Otherwise each full collection
    walks them all: pauses of 50-90 ms in the middle of a task, several a minute under load
    (docs/performance.md, P16). Garbage is collected first, so none of it is kept for good."""
    global _gc_frozen
    _gc_frozen += 1
    gc.collect()
    gc.freeze()
    # A full collection once every 1,000 young ones, not every 10: what tasks leave behind is
    # still walked in full (3-6 ms a time), so not every second or two.
    gc.set_threshold(700, 10, 1000)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _send_last_metrics(**_: object) -> None:
    METER.flush_quietly()  # a worker stopping must not fail on its metrics
    telemetry.shutdown()  # nor on its last spans


# --- traces and log format (adapters/telemetry.py; off unless OTEL_* / LOG_FORMAT say so) ---


@worker_init.connect
def _trace_worker(sender: object = None, **_: object) -> None:
    # A prefork pool's children set up after the fork (`_trace_pool_child`): the span
    # exporter's thread must be the child's own. Other pools run tasks in this process.
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    pool = get_implementation(getattr(sender, "pool_cls", "prefork"))
    if not (isinstance(pool, type) and issubclass(pool, TaskPool)):
        telemetry.setup_tracing("worker")


@worker_process_init.connect
def _trace_pool_child(**_: object) -> None:
    telemetry.setup_tracing("worker")


@beat_init.connect
def _trace_beat(**_: object) -> None:
    telemetry.setup_tracing("beat")


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: object) -> None:
    telemetry.use_json_format(logger)


if telemetry.json_logs() or telemetry.wanted():

    @task_prerun.connect
    def _name_the_bundle(task: Any = None, args: Any = None, **_: object) -> None:
        # The steps' first argument is the bundle id (log lines name it from the start; a
        # task without one clears what the thread's previous task set).
        first = args[0] if args else None
        telemetry.enter_bundle(first if isinstance(first, str) else None)

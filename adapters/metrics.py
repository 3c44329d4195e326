"""Metrics for `GET /metrics`, added up over every worker process on every host through Redis.

Workers: `METER` (one per process) counts partner calls and step durations in a dict, under a
lock and nothing else: no Redis on the hot path. A daemon thread sends what piled up as one
pipelined HINCRBY/HINCRBYFLOAT batch every `FLUSH_EVERY_S` (only when there is something), and
worker shutdown sends the rest. A forked child starts with nothing pending (the parent's counts
are the parent's to send), so nothing is counted twice.

`/metrics`: `RedisCollector` reads, at scrape time and in one round trip, those sums, the event
counters the store's transition script keeps, the size of every status index (ZCARD), and each
partner's gate and delayed queues (adapters/metrics_partners.py).
Why not prometheus_client's multiprocess mode: it shares files between the processes of ONE
host, and each scrape would need every host; the sums in Redis are one place for all of them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis import Redis, RedisError

from adapters import metrics_partners
from adapters.metrics_partners import PARTNER_OF_PATH, PartnerSnapshot
from adapters.store import BundleStore
from process_manager.bundle import IN_FLIGHT, Status
from process_manager.messages import EVENT_TYPES

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 5.0
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Sums of seconds: sent with HINCRBYFLOAT (every other field counts whole observations).
FLOAT_FIELDS = ("step_sum|", "partner_wait_sum|")
# Undo steps done, counted exactly once each: by the transition that recorded them.
COMPENSATION_OF_EVENT = {
    "TicketRefunded_v1": "refund_ticket",
    "FlightTicketsCancelled_v1": "cancel_flight_tickets",
}

Sink = Callable[[], tuple[Redis, str]]  # (client, key prefix), called when flushing


def partner_of(path: str) -> str:
    return PARTNER_OF_PATH.get(path.strip("/").split("/", 1)[0], "other")


def metrics_key(prefix: str) -> str:
    """One hash of sums: 'partner_calls|shows|ok', 'step_bucket|book_inbound_flight|0.1', ..."""
    return f"{prefix}counts:metrics"


class Meter:
    """In-memory sums of one process, sent to Redis in batches."""

    def __init__(self, flush_every_s: float = FLUSH_EVERY_S) -> None:
        self.flush_every_s = flush_every_s
        self._sink: Sink | None = None
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: defaultdict[str, float] = defaultdict(float)
        self._thread: threading.Thread | None = None

    def configure(self, sink: Sink | None) -> None:
        """Where to send the sums (no I/O now: `sink` is called when flushing). Until then
        nothing is sent and no thread runs: only worker processes configure it."""
        self._sink = sink

    # --- observations (the hot path: a lock and a few dict additions) ---
    def partner_call(self, partner: str, outcome: str) -> None:
        self._add((f"partner_calls|{partner}|{outcome}", 1))

    def partner_wait(self, partner: str, reason: str, seconds: float) -> None:
        """A step deferred because its partner was not due (`reason`: retry_after, open,
        half_open, quota), for `seconds`."""
        self._add(
            (f"partner_waits|{partner}|{reason}", 1), (f"partner_wait_sum|{partner}", seconds)
        )

    def step(self, step: str, seconds: float) -> None:
        le = next((b for b in STEP_BUCKETS if seconds <= b), "+Inf")
        self._add(
            (f"step_bucket|{step}|{le}", 1),
            (f"step_count|{step}", 1),
            (f"step_sum|{step}", seconds),
        )

    def newer_schema(self, what: str) -> None:
        """A bundle met written by a newer release (once per bundle: tasks/schema_guard.py)."""
        self._add((f"newer_schema|{what}", 1))

    def _add(self, *items: tuple[str, float]) -> None:
        with self._lock:
            for field, amount in items:
                self._pending[field] += amount
            if self._thread is None and self._sink is not None:
                self._thread = threading.Thread(
                    target=self._flush_forever, name="vip-bundles-metrics", daemon=True
                )
                self._thread.start()

    # --- sending ---
    def flush(self) -> int:
        """Send what is pending in one pipelined batch; the number of fields sent."""
        if self._sink is None:
            return 0
        with self._lock:
            pending, self._pending = self._pending, defaultdict(float)
        if not pending:
            return 0
        redis, prefix = self._sink()
        key = metrics_key(prefix)
        pipe = redis.pipeline(transaction=False)
        for field, amount in pending.items():
            if field.startswith(FLOAT_FIELDS):
                pipe.hincrbyfloat(key, field, amount)
            else:
                pipe.hincrby(key, field, int(amount))
        try:
            pipe.execute()
        except RedisError as exc:
            log.warning("metrics: not sent, kept for the next flush: %s", exc)
            with self._lock:
                for field, amount in pending.items():
                    self._pending[field] += amount
            return 0
        return len(pending)

    def _flush_forever(self) -> None:
        # An idle worker process runs no task hook, so a timer (not task_postrun) sends the
        # last observations too, within FLUSH_EVERY_S.
        while True:
            time.sleep(self.flush_every_s)
            self.flush_quietly()

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:  # metrics never take a worker (or its metrics thread) down
            log.exception("metrics: flush failed")


METER = Meter()


class RedisCollector:
    """Renders the Redis sums and indexes as Prometheus metric families, per scrape."""

    def __init__(self, store: BundleStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        st = self.store
        pipe = st.redis.pipeline(transaction=False)
        for status in Status:
            pipe.zcard(st.status_key(status))
        pipe.hgetall(st.event_counts_key)
        pipe.hgetall(metrics_key(st.prefix))
        pipe.zrange(st.in_flight_key, 0, 0, withscores=True)
        pipe.hgetall(st.archived_counts_key)
        n_partner = metrics_partners.queue_reads(pipe, st.redis, st.prefix)
        replies = pipe.execute()
        partner_replies = replies[len(replies) - n_partner :]
        *sizes, events_raw, sums_raw, oldest, archived_raw = replies[: len(replies) - n_partner]

        bundles = GaugeMetricFamily(
            "vip_bundles_bundles",
            "Bundles in each status (status indexes, plus those moved to the archive)",
            labels=["status"],
        )
        archived = {_text(k): int(v) for k, v in archived_raw.items()}
        for status, n in zip(Status, sizes, strict=True):
            bundles.add_metric([status.value], int(n) + archived.get(status.value, 0))
        yield bundles

        age = GaugeMetricFamily(
            "vip_bundles_oldest_in_flight_seconds",
            f"Age of the oldest bundle in flight ({', '.join(sorted(IN_FLIGHT))}); 0 if none",
        )
        age.add_metric([], max(time.time() - oldest[0][1], 0.0) if oldest else 0.0)
        yield age

        events = {_text(k): int(v) for k, v in events_raw.items()}
        transitions = CounterMetricFamily(
            "vip_bundles_transitions", "Transitions applied, by event", labels=["event"]
        )
        for name in sorted({*EVENT_TYPES, *events}):
            transitions.add_metric([name], events.get(name, 0))
        yield transitions

        compensations = CounterMetricFamily(
            "vip_bundles_compensations", "Undo steps done, by kind", labels=["kind"]
        )
        for event, kind in COMPENSATION_OF_EVENT.items():
            compensations.add_metric([kind], events.get(event, 0))
        yield compensations

        sums = _sums(sums_raw)
        partners = metrics_partners.snapshots(partner_replies, sums)
        yield from metrics_partners.families(partners, sums)
        yield self._step_durations(sums)
        yield self._newer_schema(sums)

    @staticmethod
    def _newer_schema(sums: dict[str, float]) -> Metric:
        newer = CounterMetricFamily(
            "vip_bundles_newer_schema",
            "Bundles left to a newer release: what this one met of a newer schema version "
            "(once per bundle a day), by what it was (task message, bundle document, event)",
            labels=["kind"],
        )
        for field, n in sorted(sums.items()):
            if field.startswith("newer_schema|"):
                newer.add_metric([field.split("|", 1)[1]], n)
        return newer

    @staticmethod
    def _step_durations(sums: dict[str, float]) -> Metric:
        histogram = HistogramMetricFamily(
            "vip_bundles_step_duration_seconds",
            "Duration of saga steps (worker side, partner calls included)",
            labels=["step"],
        )
        steps = sorted(f.split("|")[1] for f in sums if f.startswith("step_count|"))
        for step in steps:
            cumulative, buckets = 0.0, []
            for le in [*STEP_BUCKETS, "+Inf"]:
                cumulative += sums.get(f"step_bucket|{step}|{le}", 0)
                buckets.append(("+Inf" if le == "+Inf" else str(le), cumulative))
            histogram.add_metric([step], buckets, sum_value=sums.get(f"step_sum|{step}", 0.0))
        return histogram


def read_partners(store: BundleStore) -> list[PartnerSnapshot]:
    """Each partner as the fleet sees it (the console, `vip-bundles stats`): one round trip."""
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(metrics_key(store.prefix))
    metrics_partners.queue_reads(pipe, store.redis, store.prefix)
    sums_raw, *replies = pipe.execute()
    return metrics_partners.snapshots(replies, _sums(sums_raw))


def _sums(raw: dict[bytes | str, bytes | str]) -> dict[str, float]:
    return {_text(k): float(v) for k, v in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

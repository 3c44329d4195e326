"""Scenario 9: the Redis master is killed (-9) mid-run and the sentinels promote its replica.

A Redis master and its replica (appendonly yes) and three sentinels (quorum 2, down after 1 s)
are real processes on free ports (tests/reliability/sentinel_stack.py). One worker and beat
follow the master through the sentinels. 100 bundles go in through the Celery door at 100 ms
partner latency, a third of them with the return flight sold out (they roll back); the master
is killed while they are in flight, then started again: it comes back as a replica of the new
master. Replication is asynchronous, so the writes of the last moments before the kill are
lost: steps re-send with the same idempotency keys, the reconciler re-drives the bundles whose
state went back, and a caller whose request got no answer sends it again (same id).

What is checked: every bundle whose id a caller got back is on the new master the moment it is
promoted (the answers wait for a replica: Redis WAIT), and ends right; the invariants (no
effect twice, nothing leaked, every event on the stream once by event_id) and the audit hold;
a consumer group reading the stream through the failover sees each event id (it may see one
twice: it deduplicates on `event_id`, as the README says). Measured: how long from the kill
until the sentinels named a new master and until a new booking was answered again.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.result import AsyncResult
from kombu import Queue
from redis import Redis, RedisError

from process_manager.bundle import FINAL, Status
from tests.helpers import request
from tests.needs import missing
from tests.rabbitmq import own_vhost
from tests.reliability.invariants import Report
from tests.reliability.sentinel_stack import SentinelStack
from tests.reliability.stack import Stack, reconciled

pytestmark = pytest.mark.slow

BUNDLES = 100
HEALING = {"VISIBILITY_TIMEOUT_S": "30", "STALE_AFTER_S": "10"}


@pytest.fixture
def ha() -> Iterator[SentinelStack]:
    stack = SentinelStack()
    yield stack
    stack.close()


def sentinel_stack_run(ha: SentinelStack, logdir: Path, name: str, **env: str) -> Stack:
    """A scenario stack whose processes, client and Celery app all follow the master."""
    sentinel_env = {k: v for k, v in ha.env().items() if k != "REDIS_URL"}
    return Stack(
        name,
        ha.redis_url,
        logdir,
        client=ha.client(),
        app=ha.celery_app(),
        **{**sentinel_env, **HEALING, **env},
    )


class Callers:
    """The outside services: what they sent, and what each was told (answer or error)."""

    def __init__(self, st: Stack) -> None:
        self.st = st
        self.pending: dict[str, AsyncResult] = {}
        self.answered: dict[str, float] = {}  # bundle id -> when its answer came
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def book(self, **changes: Any) -> str:
        body = request(vip_bundle_id=str(uuid.uuid4()), **changes)
        bundle_id = body["vip_bundle_id"]
        self.st.submitted.append(bundle_id)
        self.st.bodies[bundle_id] = body
        self.send(bundle_id)
        return bundle_id

    def send(self, bundle_id: str) -> None:
        try:
            result = self.st.send_book(self.st.bodies[bundle_id])
        except Exception as exc:  # the broker mid-failover: the caller will send it again
            with self._lock:
                self.errors[bundle_id] = f"send: {type(exc).__name__}"
            return
        with self._lock:
            self.pending[bundle_id] = result
            self.errors.pop(bundle_id, None)

    def _collect(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pending = list(self.pending.items())
            for bundle_id, result in pending:
                try:
                    if not result.ready():
                        continue
                    answer = result.get(timeout=1, propagate=False)
                    failed = result.failed()
                except Exception:  # the result backend mid-failover: ask again later
                    continue
                with self._lock:
                    self.pending.pop(bundle_id, None)
                    if failed:
                        self.errors[bundle_id] = f"{type(answer).__name__}: {answer}"
                    else:
                        assert answer["vip_bundle_id"] == bundle_id
                        self.answered.setdefault(bundle_id, time.monotonic())
            time.sleep(0.1)

    def unanswered(self) -> list[str]:
        with self._lock:
            return [i for i in self.st.submitted if i not in self.answered]

    def wait_answers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pending:
            time.sleep(0.25)

    def resend_unanswered(self, timeout: float = 60) -> int:
        """What a caller does without an answer: send the same request again (same id)."""
        again = self.unanswered()
        for bundle_id in again:
            with self._lock:
                self.pending.pop(bundle_id, None)
            self.send(bundle_id)
        self.wait_answers(timeout)
        return len(again)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StreamConsumer:
    """A consumer group reading the events stream through the failover, as a consumer of the
    contract does; it counts every delivery and deduplicates on `event_id`."""

    def __init__(self, client: Redis, stream: str) -> None:
        self.client, self.stream = client, stream
        self.deliveries = 0
        self.errors = 0  # reads that failed (the failover)
        self.event_ids: set[str] = set()
        self._stop = threading.Event()
        self._group()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, "audit-consumer", id="0", mkstream=True)
        except RedisError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                replies = self.client.xreadgroup(
                    "audit-consumer", "c1", {self.stream: ">"}, count=200, block=200
                )
            except RedisError as exc:
                self.errors += 1
                if "NOGROUP" in str(exc):  # the group's creation was lost with the master
                    with contextlib.suppress(RedisError):
                        self._group()
                time.sleep(0.2)
                continue
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    header = json.loads(fields[b"data"])["header"]
                    self.deliveries += 1
                    self.event_ids.add(header["event_id"])
                    with contextlib.suppress(RedisError):  # else delivered again: deduplicated
                        self.client.xack(self.stream, "audit-consumer", entry_id)

    def close(self) -> dict[str, int]:
        time.sleep(1)  # the last events
        self._stop.set()
        self._thread.join(timeout=10)
        final = {
            json.loads(f[b"data"])["header"]["event_id"] for _, f in self.client.xrange(self.stream)
        }
        return {
            "deliveries": self.deliveries,
            "failed_reads": self.errors,
            "distinct_event_ids": len(self.event_ids),
            "delivered_twice_or_more": self.deliveries - len(self.event_ids),
            "on_stream_never_delivered": len(final - self.event_ids),
            "delivered_then_lost_with_the_old_master": len(self.event_ids - final),
        }


def run_failover(
    ha: SentinelStack, st: Stack, cancels: int = 0
) -> tuple[Report, dict[str, Any], Callers, list[str]]:
    """The scenario: bundles in flight, the master killed, flow measured, old master back."""
    worker = st.start_worker("worker", concurrency=4)
    st.start_beat(RECONCILE_EVERY_S="2")
    consumer = StreamConsumer(ha.client(), st.store.stream)
    callers = Callers(st)
    st.sim.set_latency(100)  # a few seconds for the batch: many bundles are in flight
    sold_out = set()
    for i in range(BUNDLES):
        if i % 3 == 0:
            flight_id = str(uuid.uuid4())
            st.limit_flight(flight_id, 0)
            sold_out.add(callers.book(return_flight_id=flight_id))
        else:
            callers.book()
    # Kill when most bundles are stored and in flight (or after a while on a slow machine).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _stored(st) < BUNDLES * 0.6:
        time.sleep(0.1)
    cancelled = cancel_some(st, callers, sold_out, cancels)
    at_kill = {str(s or "not yet stored"): n for s, n in _count(st).items()}
    answered_at_kill = set(callers.answered)

    old_master = ha.kill_master()
    killed_at = time.monotonic()
    new_port = ha.wait_promoted(old_master.port, timeout=60)
    promoted_s = time.monotonic() - killed_at
    # Every id a caller was given is on the new master: the answer waited for the replica.
    new_master = ha.node(new_port).client()
    missing = [i for i in answered_at_kill if not new_master.exists(f"vip-bundles:bundle:{i}")]
    progress_s = first_transition(new_master, st, killed_at)
    flow_s = first_booking_answered(st, callers, killed_at)

    ha.restart(old_master)  # it comes back as a replica of the new master
    ha.wait_settled(timeout=120)
    back_s = time.monotonic() - killed_at
    callers.wait_answers(60)
    resent = callers.resend_unanswered()
    cancel_answers = finish_cancels(st, cancelled)
    statuses = st.wait(timeout=300)
    st.sim.set_latency(0)
    events = consumer.close()
    callers.close()
    report = st.check()
    not_cancelled = [i for i in cancel_answers["answered"] if statuses.get(i) != Status.CANCELLED]
    for bundle_id in not_cancelled:
        report.violations.append(f"{bundle_id}: cancel answered, ends {statuses.get(bundle_id)}")
    for bundle_id in missing:
        report.add("lost", f"{bundle_id}: answered, missing on the promoted replica")
    figures = {
        "bundles": len(st.submitted),
        "status_at_kill": at_kill,
        "answered_before_kill": len(answered_at_kill),
        "answered_missing_on_new_master": len(missing),
        "seconds_kill_to_new_master": round(promoted_s, 1),
        "seconds_kill_to_first_transition_on_new_master": round(progress_s, 1),
        "seconds_kill_to_first_booking_answered": round(flow_s, 1),
        "seconds_kill_to_old_master_back_as_replica": round(back_s, 1),
        "refused_not_replicated_or_failed": len(callers.errors),
        "resent_by_client": resent,
        "reconciler": dict(reconciled(worker)),
        "stream_consumer": events,
    }
    if cancels:
        figures["cancels"] = {k: len(v) for k, v in cancel_answers.items()}
    assert all(s in FINAL for s in statuses.values()), str(report)
    return report, figures, callers, not_cancelled


def cancel_some(st: Stack, callers: Callers, sold_out: set[str], n: int) -> dict[str, Any]:
    """Cancel `n` bundles (not the sold-out ones: those may fail first) just before the kill."""
    chosen = [i for i in st.submitted if i not in sold_out][-n:] if n else []
    return {bundle_id: st.send_cancel(bundle_id, "racing the failover") for bundle_id in chosen}


def finish_cancels(st: Stack, sent: dict[str, AsyncResult]) -> dict[str, list[str]]:
    """Each cancel's answer; a cancel without one is sent again (idempotent)."""
    out: dict[str, list[str]] = {"answered": [], "resent": []}
    for bundle_id, result in sent.items():
        try:
            result.get(timeout=20)
        except Exception:
            out["resent"].append(bundle_id)
            st.send_cancel(bundle_id, "racing the failover").get(timeout=60)
        out["answered"].append(bundle_id)
    return out


def first_booking_answered(st: Stack, callers: Callers, since: float, limit: float = 120) -> float:
    """Seconds from `since` until a new booking sent now got its answer."""
    deadline = since + limit
    while time.monotonic() < deadline:
        bundle_id = callers.book()
        started = time.monotonic()
        while time.monotonic() - started < 5:
            if bundle_id in callers.answered:
                return callers.answered[bundle_id] - since
            if bundle_id in callers.errors:
                break
            time.sleep(0.05)
    raise AssertionError("no booking answered after the failover")


def first_transition(master: Redis, st: Stack, since: float, limit: float = 120) -> float:
    """Seconds from `since` until the saga wrote a transition on the new master (its
    transition counters grew): bundles flow again."""

    def transitions() -> int:
        counts = master.hgetall(st.store.event_counts_key)
        return sum(int(v) for v in counts.values())

    at_promotion = transitions()
    deadline = since + limit
    while time.monotonic() < deadline:
        if transitions() > at_promotion:
            return time.monotonic() - since
        time.sleep(0.05)
    raise AssertionError("no transition on the new master")


def _stored(st: Stack) -> int:
    return sum(1 for s in st.statuses(st.submitted).values() if s is not None)


def _count(st: Stack) -> dict[Any, int]:
    counts: dict[Any, int] = {}
    for status in st.statuses(st.submitted).values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_master_killed_mid_run_loses_nothing_a_caller_was_told(ha, logdir, record):
    st = sentinel_stack_run(ha, logdir, "failover-kill")
    try:
        report, figures, _, _ = run_failover(ha, st)
        record(
            "10-failover-kill",
            "Redis master killed, Sentinel failover",
            report,
            faults=FAULTS,
            **figures,
        )
    finally:
        st.close()
    assert figures["answered_missing_on_new_master"] == 0, str(report)
    assert report.violations == [], str(report)


def test_cancels_racing_the_failover_end_cancelled(ha, logdir, record):
    st = sentinel_stack_run(ha, logdir, "failover-cancel")
    try:
        report, figures, _, not_cancelled = run_failover(ha, st, cancels=20)
        record(
            "10-failover-cancel",
            "Redis master killed while cancels arrive",
            report,
            faults=[*FAULTS, "20 bundles cancelled through the Celery door just before the kill"],
            **figures,
        )
    finally:
        st.close()
    assert not_cancelled == [], str(report)
    assert report.violations == [], str(report)


FAULTS = [
    f"{BUNDLES} bundles through the Celery door (a third with the return flight sold out), "
    "partner latency 100 ms",
    "Redis master + replica (appendonly yes), 3 sentinels (quorum 2, down-after 1 s, "
    "failover-timeout 3 s); one worker (4 processes) and beat follow them",
    "the master killed (SIGKILL) once 60% of the bundles are stored (most in flight); started "
    "again once a new master is named (it comes back as a replica)",
    "VISIBILITY_TIMEOUT_S=30, STALE_AFTER_S=10, beat every 2 s; callers without an answer "
    "send the same request again",
]


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of the scenario's own (a failure in CI without RabbitMQ)."""
    with own_vhost("vip-bundles-failover") as url:
        if url is None:
            missing("no RabbitMQ (rabbitmqctl) to give the scenario a vhost")
        yield url


def test_state_on_sentinel_broker_on_rabbitmq_quorum_queues(ha, rabbit_vhost, logdir, record):
    """The same failover with RabbitMQ (quorum queues) as the broker: the messages are safe at
    RabbitMQ, the state and the results follow the Sentinel master."""
    app = ha.celery_app()
    app.conf.update(
        broker_url=rabbit_vhost,
        broker_transport=None,
        broker_transport_options={"confirm_publish": True},
        task_queues=[
            Queue(q.name, q.exchange, routing_key=q.routing_key, queue_arguments=QUORUM)
            for q in app.conf.task_queues
        ],
        task_create_missing_queue_type="quorum",
    )
    sentinel_env = {k: v for k, v in ha.env().items() if k != "REDIS_URL"}
    env = {**sentinel_env, **HEALING, "BROKER_URL": rabbit_vhost, "BROKER_QUEUE_TYPE": "quorum"}
    st = Stack("failover-rabbitmq", ha.redis_url, logdir, client=ha.client(), app=app, **env)
    try:
        report, figures, _, _ = run_failover(ha, st)
        record(
            "10-failover-rabbitmq",
            "Redis master killed, broker on RabbitMQ",
            report,
            faults=[
                *FAULTS,
                "broker: RabbitMQ (a vhost of its own, quorum queues, publisher confirms); "
                "state and results on the Sentinel master",
            ],
            **figures,
        )
    finally:
        st.close()
    assert figures["answered_missing_on_new_master"] == 0, str(report)
    assert report.violations == [], str(report)


QUORUM = {"x-queue-type": "quorum"}

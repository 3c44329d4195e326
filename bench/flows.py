"""The flows the benchmark drives, and the closed loop that drives them.

A flow is one baseline chain or one saga bundle. The driver keeps `window` flows in flight: it
sends a new one as each finishes, so the worker is always busy yet latency is not swamped by
a queue of thousands. Completion is pushed, never polled: the baseline's last task RPUSHes
`<id> <time>`; a bundle's terminal event arrives on the events stream (XREAD BLOCK).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any, Protocol

import redis
from celery.result import AsyncResult

from bench.baseline_tasks import baseline_chain, done_stream
from celeryconfig import INTAKE_QUEUE
from tasks.celery_app import app

TERMINAL = {"VipBundleFinalized_v1", "VipBundleFailed_v1", "CompensationFailed_v1"}


class Stalled(RuntimeError):
    pass


class Flow(Protocol):
    own: Counter[str]  # Redis commands the driver sent only to learn what finished
    finished: dict[str, float]  # flow id -> when it finished (epoch seconds, the worker's clock)

    def send(self) -> tuple[str, float]: ...

    def completed(self, block_s: float) -> list[str]: ...


class BaselineFlow:
    """Bare chains with the saga's partner calls; each ends by appending to a stream."""

    def __init__(self, r: redis.Redis, request: dict[str, Any]) -> None:
        self.r = r
        self.stream = done_stream()
        self.request = request
        self.own: Counter[str] = Counter()
        self.finished: dict[str, float] = {}  # chain id -> time its last task ended
        newest = r.xrevrange(self.stream, count=1)
        self.last_id: bytes | str = newest[0][0] if newest else "0-0"

    def send(self) -> tuple[str, float]:
        chain_id = uuid.uuid4().hex
        at = time.time()
        r = self.request
        baseline_chain(
            chain_id, r["show_id"], r["inbound_flight_id"], r["return_flight_id"]
        ).apply_async()
        return chain_id, at

    def completed(self, block_s: float) -> list[str]:
        self.own["xread"] += 1
        reply = self.r.xread({self.stream: self.last_id}, count=5000, block=int(block_s * 1000))
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                chain_id = fields[b"chain_id"].decode()
                self.finished[chain_id] = float(fields[b"at"])
                out.append(chain_id)
        return out


class PeerFlow(BaselineFlow):
    """Bundles booked with celery-saga (bench/peer_tasks.py); each ends by appending to a
    stream of its own, as the bare chain's do."""

    def __init__(self, r: redis.Redis, request: dict[str, Any]) -> None:
        from bench.peer_tasks import done_stream as peer_stream

        super().__init__(r, request)
        self.stream = peer_stream()
        newest = r.xrevrange(self.stream, count=1)
        self.last_id = newest[0][0] if newest else "0-0"

    def send(self) -> tuple[str, float]:
        from bench.peer_tasks import BUNDLE

        flow_id = uuid.uuid4().hex
        at = time.time()
        r = self.request
        BUNDLE.run(
            flow_id=flow_id,
            show_id=r["show_id"],
            inbound_id=r["inbound_flight_id"],
            return_id=r["return_flight_id"],
        )
        return flow_id, at


class SagaFlow:
    """Bundles booked through the Celery door, exactly as an outside service books them."""

    def __init__(self, r: redis.Redis, stream: str, request: dict[str, Any]) -> None:
        self.r = r
        self.stream = stream
        self.request = request
        self.own: Counter[str] = Counter()
        self.events: Counter[str] = Counter()  # stream entries per bundle
        self.finished: dict[str, float] = {}  # bundle id -> when its last event was streamed
        self.answers: dict[str, AsyncResult] = {}
        newest = r.xrevrange(stream, count=1)
        self.last_id: bytes | str = newest[0][0] if newest else "0-0"

    def send(self) -> tuple[str, float]:
        bundle_id = str(uuid.uuid4())
        at = time.time()
        self.answers[bundle_id] = app.send_task(
            "vip_bundle.book",
            kwargs={**self.request, "vip_bundle_id": bundle_id},
            queue=INTAKE_QUEUE,
        )
        return bundle_id, at

    def completed(self, block_s: float) -> list[str]:
        self.own["xread"] += 1
        reply = self.r.xread({self.stream: self.last_id}, count=5000, block=int(block_s * 1000))
        done = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                bundle_id = fields[b"vip_bundle_id"].decode()
                self.events[bundle_id] += 1
                if fields[b"event_name"].decode() in TERMINAL:
                    done.append(bundle_id)
                    self.finished[bundle_id] = int(entry_id.split(b"-")[0]) / 1000  # its ms
        for bundle_id in done:  # the intake answer, read as a caller reads it
            if (answer := self.answers.pop(bundle_id, None)) is not None:
                answer.get(timeout=30)
        return done


class FloorFlow(SagaFlow):
    """The floor's bundles (bench/floor_tasks.py), booked and awaited as the saga's are."""

    def send(self) -> tuple[str, float]:
        bundle_id = str(uuid.uuid4())
        at = time.time()
        r = self.request
        self.answers[bundle_id] = app.send_task(
            "bench.floor.book",
            args=[bundle_id, r["show_id"], r["inbound_flight_id"], r["return_flight_id"]],
            queue=INTAKE_QUEUE,
        )
        return bundle_id, at


def drive(flow: Flow, n: int, window: int, stall_s: float = 90.0) -> dict[str, float]:
    """Run `n` flows, `window` at a time; return each flow's send time (epoch seconds)."""
    sent: dict[str, float] = {}
    pending: set[str] = set()
    progress = time.monotonic()
    while len(sent) < n or pending:
        while len(sent) < n and len(pending) < window:
            flow_id, at = flow.send()
            sent[flow_id] = at
            pending.add(flow_id)
        finished = pending.intersection(flow.completed(0.5))
        if finished:
            pending -= finished
            progress = time.monotonic()
        elif time.monotonic() - progress > stall_s:
            raise Stalled(
                f"{len(pending)} flows unfinished after {stall_s} s: {sorted(pending)[:3]}"
            )
    return sent

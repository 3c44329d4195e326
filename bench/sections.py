"""The measured sections: baseline chain, saga success, saga rollback, success at scale.

Every section runs a warm-up (not measured), then `n` flows in a closed loop bracketed by the
meter. Saga latencies come from the timestamps the workers wrote into each bundle's history,
so they carry no polling error; the send time is the driver's clock on the same machine.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from bench.floor_tasks import events_stream
from bench.flows import BaselineFlow, FloorFlow, Flow, PeerFlow, SagaFlow, drive
from bench.meter import Cost, Meter
from bench.profile import sampled
from bench.seed import stored
from partner_simulator.server import SimulatorClient
from process_manager.bundle import Bundle, HistoryEntry, Status
from tasks.celery_app import store


@dataclass
class Section:
    name: str
    flows: int
    throughput: float  # flows finished per second, first send to last finish
    latency_ms: list[float]
    latency_is: str  # what the latency measures
    cost: Cost
    bytes_per_flow: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.latency_ms, q)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "flows": self.flows,
            "throughput_per_s": round(self.throughput, 2),
            "latency_is": self.latency_is,
            "latency_ms": {q: round(self.p(v), 2) for q, v in (("p50", 50), ("p99", 99))}
            | {"max": round(max(self.latency_ms), 2)},
            "bytes_per_flow": {k: round(v, 1) for k, v in self.bytes_per_flow.items()},
            **self.cost.as_dict(),
            **self.extra,
            "errors": self.errors,
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def request(return_flight_id: str) -> dict[str, Any]:
    """One show and inbound flight for every bundle (a million seats each in the simulator)."""
    return {
        "customer_email": "bench@example.com",
        "number_of_tickets": 2,
        "show_id": SHOW_ID,
        "passengers": ["Ann Lee", "Bob Lee"],
        "inbound_flight_id": INBOUND_ID,
        "return_flight_id": return_flight_id,
    }


SHOW_ID, INBOUND_ID, RETURN_ID, SOLD_OUT_ID = (str(uuid.uuid4()) for _ in range(4))


@dataclass(frozen=True)
class Load:
    """How a section is driven: `n` flows, `window` of them in flight at once."""

    n: int
    window: int

    def label(self) -> str:
        return f"{self.n} flows, window {self.window}"


@dataclass
class Bench:
    meter: Meter
    r: redis.Redis
    profile_dir: Path | None = None

    def measured(
        self,
        name: str,
        load: Load,
        make: Callable[[], Flow],
        ready: Callable[[], object] = lambda: None,
    ) -> tuple[Flow, dict[str, float], Cost]:
        drive(make(), min(load.n, max(load.window * 2, 4)), load.window)  # warm-up
        ready()  # after the warm-up, before the measurement
        flow = make()
        with sampled(self.meter.stack.worker_pid, self._profile_file(name)):
            before = self.meter.start()
            sent = drive(flow, load.n, load.window)
            time.sleep(0.3)  # the last tasks' acks and events land inside the measurement
            cost = self.meter.stop(before, load.n, flow.own)
        return flow, sent, cost

    def _profile_file(self, name: str) -> Path | None:
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        taken = len(list(self.profile_dir.glob(f"{slug}-*.txt")))
        return self.profile_dir / f"{slug}-{taken + 1}.txt"  # one file per round

    # --- the baseline and the floor ---------------------------------------------------------------

    def baseline(self, load: Load, return_flight_id: str = "") -> Section:
        req = request(return_flight_id or RETURN_ID)
        make = partial(BaselineFlow, self.r, req)
        return self._finished("baseline", "baseline chain", load, make, "send -> last task done")

    def peer(self, load: Load, return_flight_id: str = "") -> Section:
        """celery-saga 0.1.1 booking the same bundle (bench/peer_tasks.py)."""
        req = request(return_flight_id or RETURN_ID)
        make = partial(PeerFlow, self.r, req)
        return self._finished("peer", "celery-saga", load, make, "saga.run() -> last step done")

    def floor(self, load: Load) -> Section:
        """The saga's design without the saga's code (bench/floor_tasks.py): throughput only."""
        req, stream = request(RETURN_ID), events_stream()
        return self._finished(
            "floor",
            "floor (the design, no saga code)",
            load,
            partial(FloorFlow, self.r, stream, req),
            "send_task(bench.floor.book) -> finalized (stream entry id, ms)",
        )

    def _finished(
        self, slug: str, name: str, load: Load, make: Callable[[], Flow], latency_is: str
    ) -> Section:
        """A section timed by the finish times its flows report (`Flow.finished`)."""
        flow, sent, cost = self.measured(slug, load, make)
        done = flow.finished
        return Section(
            name=name,
            flows=load.n,
            throughput=load.n / (max(done[f] for f in sent) - min(sent.values())),
            latency_ms=[(done[f] - t) * 1000 for f, t in sent.items()],
            latency_is=latency_is,
            cost=cost,
            extra={"window": load.window},
        )

    # --- saga -----------------------------------------------------------------------------------

    def saga(self, name: str, load: Load, return_flight_id: str, rollback: bool) -> Section:
        st = store()
        before: dict[str, Any] = {"stored": stored(st)}

        def ready() -> None:
            before["stream"] = _memory(self.r, st.stream)
            before["kept"] = self._kept_keys()

        flow, sent, cost = self.measured(
            name, load, lambda: SagaFlow(self.r, st.stream, request(return_flight_id)), ready
        )
        assert isinstance(flow, SagaFlow)
        bundles = {b: st.require(b) for b in sent}
        want = Status.FAILED if rollback else Status.FINALIZED
        errors = [f"{b}: {x.status}" for b, x in bundles.items() if x.status is not want]
        ok = {b: x for b, x in bundles.items() if x.status is want}
        end = "VipBundleFailed_v1" if rollback else "VipBundleFinalized_v1"
        ends = {b: _at(x, end) for b, x in ok.items()}
        section = Section(
            name=name,
            flows=load.n,
            throughput=len(ok) / (max(ends.values(), default=0) - min(sent.values())),
            latency_ms=[(ends[b] - sent[b]) * 1000 for b in ok] or [float("nan")],
            latency_is="send_task(vip_bundle.book) -> finalized",
            cost=cost,
            extra={"window": load.window, "stored_before": before["stored"]},
            errors=errors[:20],
        )
        if rollback and ok:
            section.extra["request_to_failed_ms"] = _summary(section.latency_ms)
            section.latency_ms = [
                (ends[b] - _at(x, "FlightBookingFailed_v1")) * 1000 for b, x in ok.items()
            ]
            section.latency_is = "409 (FlightBookingFailed_v1) -> failed (compensation)"
        history = [h for x in bundles.values() for h in x.history]
        streamed = sum(flow.events[b] for b in sent)
        section.extra["events_per_flow"] = streamed / load.n
        section.extra["transitions_per_flow"] = len(history) / load.n
        section.extra["transition_script_commands_per_flow"] = round(
            _script_commands(history, streamed) / load.n, 2
        )
        section.bytes_per_flow, section.extra["other_keys_per_flow"] = self._bytes(
            list(bundles), want, before
        )
        return section

    def _bytes(
        self, ids: list[str], status: Status, before: dict[str, Any]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Bytes one bundle keeps in Redis: its document, its index entry, its stream entries,
        and other keys made during the section that outlive it (results, counters, marks).
        """
        st = store()
        sample = ids[:200]
        doc = sum(_memory(self.r, st._bundle_key(b)) for b in sample) / len(sample)
        index_key = st.status_key(status)
        index = _memory(self.r, index_key) / max(int(self.r.zcard(index_key)), 1)
        stream = (_memory(self.r, st.stream) - before["stream"]) / len(ids)
        # Other keys, by kind ("celery-task-meta-...", "starts:...", "seen:..."): each kind's
        # mean size from a sample of its keys, times how many the section left per bundle.
        by_kind: dict[str, list[bytes]] = {}
        for key in self._kept_keys() - before["kept"]:
            kind = re.split(r"[:-]", key[len(st.prefix) :].decode(), maxsplit=1)[0]
            by_kind.setdefault(kind, []).append(key)
        other = {
            kind: statistics.mean(_memory(self.r, k) for k in keys[:100]) * len(keys) / len(ids)
            for kind, keys in by_kind.items()
        }
        sizes = {"doc": doc, "status_index": index, "stream": stream}
        sizes |= {f"keys:{kind}": size for kind, size in other.items()}
        sizes["total"] = sum(sizes.values())
        return sizes, {kind: len(keys) / len(ids) for kind, keys in by_kind.items()}

    def _kept_keys(self) -> set[bytes]:
        """Keys of the run besides bundles, indexes and the stream: task results, seen-marks,
        step counters... whatever the saga or Celery keeps per bundle (queues are empty here).
        """
        prefix = store().prefix
        skip = tuple(f"{prefix}{k}".encode() for k in ("bundle:", "status:", "events", "bench:"))
        return {
            k for k in self.r.scan_iter(match=f"{prefix}*", count=5000) if not k.startswith(skip)
        }

    def sold_out(self, sim_url: str) -> str:
        with SimulatorClient(sim_url) as sim:
            sim.set_flight_seats(SOLD_OUT_ID, 0)
        return SOLD_OUT_ID


def _at(bundle: Bundle, event: str) -> float:
    return next(h.at for h in reversed(bundle.history) if h.event == event).timestamp()


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(ms, 50), 2), "p99": round(percentile(ms, 99), 2)}


def _memory(r: redis.Redis, key: str) -> int:
    return int(r.memory_usage(key, samples=0) or 0)


def _script_commands(history: list[HistoryEntry], streamed: int) -> int:
    """Commands the transition Lua script ran (commandstats counts them besides EVALSHA).

    Each stored transition reads the version (HGET), writes the doc (HSET) and the index
    (ZADD); a status change also ZREMs, a published event XADDs. (A run that lost a version
    race only did the HGET: rare, not counted.)
    """
    moves = sum(1 for h in history if h.from_status is not None and h.from_status != h.to_status)
    return 3 * len(history) + moves + streamed

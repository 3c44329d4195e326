"""The traced stack of tests/e2e/test_traces.py and what its tests read off the spans.

Every process of its own (a Redis database, the simulator, a `celery worker`, `celery beat`,
`vip-bundles api`) with the OTEL_* variables pointing at an OTLP/HTTP receiver in the test
process, and LOG_FORMAT=json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery

from adapters.store import BundleStore
from partner_simulator.server import SimulatorClient, wait_for_health
from process_manager.bundle import Bundle, Status
from tests.conftest import SERVER_URL
from tests.e2e.api_server import Door, start_door
from tests.otlp_receiver import OtlpHttpReceiver, Span, tree
from vip_bundles import local_stack

API_KEY = "trace-test-key-0123456789abcdefghijklmnop"
TRACE_URL = "https://grafana.example/explore?traceId={trace_id}"
# Personal data the requests carry: no log line of any process may show it.
EMAIL, PASSENGERS = "zelda.quist@example.org", ["Zelda Quist", "Yorick Quist"]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@dataclass
class Stack:
    receiver: OtlpHttpReceiver
    door: Door
    sim: SimulatorClient
    store: BundleStore
    worker: local_stack.Worker
    logdir: Path
    env: dict[str, str]  # the workers'
    celery: Celery
    started: list[Any]  # stopped at the end

    def start_worker(self, name: str) -> local_stack.Worker:
        worker = local_stack.start_worker(
            self.env, f"{name}@localhost", 4, logdir=self.logdir, control_app=self.celery
        )
        self.started.append(worker)
        return worker

    def client(self) -> httpx.Client:
        return self.door.client(API_KEY)

    def wait(self, bundle_id: str, until: set[Status], timeout: float = 30) -> Bundle:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (b := self.store.get(bundle_id)) is not None and b.status in until:
                return b
            time.sleep(0.05)
        raise AssertionError(f"{bundle_id} not in {until}: {self.store.get(bundle_id)}")

    def book(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        with self.client() as http:
            answer = http.post("/book-vip-bundle", json=body, headers=headers or {})
        assert answer.status_code == 201, answer.text
        return str(answer.json()["vip_bundle_id"])

    def bundle_trace(self, bundle: Bundle, until: set[str]) -> list[Span]:
        """Every span of the bundle's trace, once spans named `until` are all in."""
        trace_id = trace_of(bundle)
        self.receiver.wait_for(
            lambda spans: until <= {s.name for s in spans if s.trace_id == trace_id}
        )
        time.sleep(0.3)  # the last batches (the partner calls end before their step)
        return self.receiver.trace(trace_id)


def trace_of(bundle: Bundle) -> str:
    assert bundle.traceparent, "the bundle stored no trace context"
    return bundle.traceparent.split("-")[1]


@contextmanager
def traced_stack(logdir: Path, pool: str = "prefork", **worker_env: str) -> Iterator[Stack]:
    """The stack, every process traced to a receiver here; `worker_env` for the workers."""
    db = local_stack.claim_database(SERVER_URL)
    sim_port = local_stack.free_port()
    with OtlpHttpReceiver() as receiver:
        env = local_stack.celery_env(
            REDIS_URL=db.url,
            GATEWAY_URL=f"http://127.0.0.1:{sim_port}",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",  # spans leave within 0.1 s: the test waits less
            LOG_FORMAT="json",
            API_KEYS=f"{API_KEY}:book+read+operate",
            TRACE_URL_TEMPLATE=TRACE_URL,
            ARCHIVE_URL="",
        )
        env.pop("OTEL_SERVICE_NAME", None)
        sim_log = open(logdir / "simulator.log", "w")  # noqa: SIM115 (closed below)
        sim_proc = subprocess.Popen(
            [sys.executable, "-m", "partner_simulator", "--port", str(sim_port)],
            env=env,
            stdout=sim_log,
            stderr=subprocess.STDOUT,
            preexec_fn=local_stack.die_with_parent,
        )
        control = Celery(broker=db.url, backend=db.url)
        started: list[Any] = []
        try:
            wait_for_health(
                f"http://127.0.0.1:{sim_port}", 15, alive=lambda: sim_proc.poll() is None
            )
            worker = local_stack.start_worker(
                {**env, **worker_env},
                "traced@localhost",
                4,
                pool,
                logdir=logdir,
                control_app=control,
            )
            started.append(worker)
            beat = local_stack.start_beat(env, logdir)
            door = start_door(logdir, env)
            started += [door, beat]
            client = redis.Redis.from_url(db.url)
            yield Stack(
                receiver,
                door,
                SimulatorClient(f"http://127.0.0.1:{sim_port}"),
                BundleStore(client),
                worker,
                logdir,
                {**env, **worker_env},
                control,
                started,
            )
        finally:
            for process in reversed(started):
                if isinstance(process, subprocess.Popen):
                    local_stack.stop_process(process)  # type: ignore[arg-type]
                else:
                    process.stop()
            sim_proc.terminate()
            sim_proc.wait()
            sim_log.close()
            db.release()


def by_name(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def one(spans: list[Span], name: str, **attributes: Any) -> Span:
    found = [
        s
        for s in by_name(spans, name)
        if all(s.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{name} {attributes}: {len(found)} spans\n" + "\n".join(tree(spans))
    return found[0]


def run_span(spans: list[Span], task: str, after: Span, **attributes: Any) -> Span:
    """The span of a task run, its parent `after`, the span that sent it (sending makes no
    span of its own: adapters/celery_tracing.py)."""
    run = one(spans, f"run/{task}", **attributes)
    assert run.kind == "consumer" and run.parent_id == after.span_id, "\n".join(tree(spans))
    return run


def assert_joined(spans: list[Span], root_parent: str = "") -> None:
    """One tree: every span's parent is in the trace (but the root's, the caller's span)."""
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_id not in ids and s.parent_id != root_parent]
    assert not orphans, f"orphans {[s.name for s in orphans]}\n" + "\n".join(tree(spans))
    assert len({s.trace_id for s in spans}) == 1


def partner_calls(spans: list[Span], step: Span) -> list[Span]:
    return [
        s
        for s in spans
        if s.parent_id == step.span_id
        and s.kind == "client"
        and "vip_bundle.partner" in s.attributes
    ]


def only_trace_naming(stack: Stack, bundle: Bundle) -> None:
    """No span of another trace names this bundle."""
    naming = {
        s.trace_id
        for s in stack.receiver.spans
        if s.attributes.get("vip_bundle.id") == bundle.vip_bundle_id
    }
    assert naming == {trace_of(bundle)}


def sim_saw(stack: Stack, bundle: Bundle) -> set[str]:
    """Trace ids of the `traceparent` headers the simulator got in this bundle's calls."""
    mine = {
        bundle.vip_bundle_id,
        bundle.booking_id,
        *bundle.ticket_ids,
        *bundle.flight_ticket_ids(),
    }
    seen = set()
    for call in stack.sim.calls():
        blob = " ".join([call["path"], *map(str, (call.get("body") or {}).values())])
        if any(i in blob for i in mine):
            headers = {k.lower(): v for k, v in (call.get("headers") or {}).items()}
            seen.add(
                headers.get("traceparent", "-").split("-")[1] if "traceparent" in headers else ""
            )
    return seen


def stream_contexts(stack: Stack, bundle: Bundle) -> list[str]:
    out = []
    for _, fields in stack.store.redis.xrange(stack.store.stream):
        if fields[b"vip_bundle_id"].decode() == bundle.vip_bundle_id:
            out.append(json.loads(fields[b"data"])["header"].get("traceparent", ""))
    return out

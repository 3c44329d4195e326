"""One scenario's private stack: its own Redis database, partner simulator and worker processes.

The database number separates the broker's queues, the results, the bundles and the events
stream (all under the product's default names), so no other worker of the test session (nor
a concurrent run) ever takes a scenario's messages, and the invariants see exactly the bundles
the scenario made. The simulator is a subprocess of its own, so "what the partners saw" is
this scenario's traffic only.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from celery.result import AsyncResult
from redis import Redis, RedisError

from adapters.archive import BundleArchive
from adapters.store import BundleStore
from partner_simulator.server import SimulatorClient, start_subprocess
from process_manager.bundle import FINAL, Bundle, Status
from tests.helpers import request
from tests.reliability import invariants
from tests.reliability.previous_release import PreviousRelease
from vip_bundles import local_stack

INTAKE, BOOKING, COMPENSATION = "vip-bundles", "vip-bundles.booking", "vip-bundles.compensation"
SETTLED = frozenset({*FINAL, Status.COMPENSATION_FAILED})
# Workers of a scenario heal with the reconciler only when a scenario says so.
QUIET = {"STALE_AFTER_S": "3600", "RECONCILE_EVERY_S": "3600", "VISIBILITY_TIMEOUT_S": "3600"}
# The pools the guarantees are shown on: Celery's default, and the I/O pool the README
# recommends at the partners' real speed (docs/performance.md). A module runs on both with
# `pytestmark = [..., pytest.mark.parametrize("worker_pool", POOLS)]`.
POOLS = ["prefork", "threads"]
# On threads, a scenario's workers run the README's booking line, `-P threads -c 64`: a kill -9
# then takes up to 64 steps in flight with it, not 4. Scenarios that pin one or two slots (to
# order their steps) keep them.
THREADS_CONCURRENCY = 64


def suffix(pool: str) -> str:
    """What tells a scenario's names and figures on another pool apart (nothing on prefork)."""
    return "" if pool == "prefork" else f"-{pool}"


_RECEIVED = re.compile(r"Task ([\w.]+)\[([0-9a-f-]{36})\] received")
_RECONCILED = re.compile(r"reconcile: (\{.*\})")


def client_app(redis_url: str) -> Celery:
    """A Celery app that sends by name with our routes (so it can reach every queue, as beat
    and the process manager do) on the scenario's broker. It pings workers; it runs nothing."""
    app = Celery("vip-bundles-reliability")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    return app


class Stack:
    def __init__(
        self,
        name: str,
        redis_url: str,
        logdir: Path,
        release: Callable[[], None] | None = None,
        client: Redis | None = None,
        app: Celery | None = None,
        pool: str = "prefork",
        **env: str,
    ) -> None:
        """`client` and `app` replace the Redis client and the Celery app made from
        `redis_url` (e.g. ones that follow a Sentinel master); `env` goes to every process."""
        self.name = name
        self.pool = pool  # every worker's `-P`: the scenarios run on prefork and on threads
        self.redis_url = redis_url  # a database of the scenario's own
        self._release = release
        self.logdir = logdir / name
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.redis = client or Redis.from_url(redis_url)
        self.store = BundleStore(self.redis)
        self.sim_process, self.sim_url = start_subprocess()
        self.sim = SimulatorClient(self.sim_url, timeout=30)
        self.app = app or client_app(redis_url)
        self.env_defaults = {**QUIET, **env}
        self.workers: list[local_stack.Worker] = []
        self.beats: list[subprocess.Popen[bytes]] = []
        self.submitted: list[str] = []
        self.bodies: dict[str, dict[str, Any]] = {}
        self.capacity: dict[str, int] = {}
        # The scenario's own archive, when it archives (tests/reliability/test_archive.py).
        self.archive: BundleArchive | None = None

    # --- processes ---
    def env(self, **overrides: str) -> dict[str, str]:
        return local_stack.celery_env(
            REDIS_URL=self.redis_url,
            GATEWAY_URL=self.sim_url,
            **{**self.env_defaults, **overrides},
        )

    def start_worker(
        self,
        name: str,
        concurrency: int = 4,
        exact: bool = False,
        release: PreviousRelease | None = None,
        **env: str,
    ) -> local_stack.Worker:
        """A worker of this code, or of `release` (the previous one: test_mixed_fleet.py).
        `exact`: run `-c concurrency` as given (the back-pressure scenarios run the issue's
        `-P threads -c 16`), not the README's 64 threads."""
        if self.pool == "threads" and concurrency > 2 and not exact:
            concurrency = THREADS_CONCURRENCY
        worker = local_stack.start_worker(
            self.env(**env) if release is None else release.env(self.env(**env)),
            name=f"{self.name}-{name}@localhost",
            concurrency=concurrency,
            pool=self.pool,
            logdir=self.logdir,
            control_app=self.app,
            **_code_of(release),
        )
        self.workers.append(worker)
        return worker

    def start_beat(
        self, release: PreviousRelease | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        beat_dir = self.logdir / f"beat-{len(self.beats)}"
        beat_dir.mkdir()
        environment = self.env(**env) if release is None else release.env(self.env(**env))
        beat = local_stack.start_beat(environment, beat_dir, **_code_of(release))
        self.beats.append(beat)
        return beat

    def close(self) -> None:
        for beat in self.beats:
            local_stack.stop_process(beat)
        for worker in self.workers:
            worker.stop()
        self.sim.close()
        self.sim_process.terminate()
        self.sim_process.wait()
        self.app.close()
        self.redis.close()
        if self._release is not None:
            self._release()

    # --- doors ---
    def limit_flight(self, flight_id: str, seats: int) -> None:
        self.sim.set_flight_seats(flight_id, seats)
        self.capacity[flight_id] = seats

    def book(self, **changes: Any) -> str:
        """Send one valid request through the Celery door; the id is ours, so a lost message
        still shows as a lost bundle."""
        body = request(vip_bundle_id=str(uuid.uuid4()), **changes)
        self.send_book(body)
        self.submitted.append(body["vip_bundle_id"])
        self.bodies[body["vip_bundle_id"]] = body
        return body["vip_bundle_id"]

    def book_mix(self, bundles: int) -> set[str]:
        """Book `bundles`, every third with a sold-out return flight; returns those ids."""
        sold_out = set()
        for i in range(bundles):
            if i % 3 == 0:
                flight_id = str(uuid.uuid4())
                self.limit_flight(flight_id, 0)
                sold_out.add(self.book(return_flight_id=flight_id))
            else:
                self.book()
        return sold_out

    def send_book(self, body: dict[str, Any]) -> AsyncResult:
        return self.app.send_task("vip_bundle.book", kwargs=body, queue=INTAKE)

    def send_cancel(self, bundle_id: str, reason: str = "customer asked") -> AsyncResult:
        """A cancel through the Celery door, as an outside service sends it."""
        body = {"vip_bundle_id": bundle_id, "reason": reason}
        return self.app.send_task("vip_bundle.cancel", kwargs=body, queue=INTAKE)

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        """Send a task by name, routed as our own app routes it (celeryconfig.task_routes)."""
        return self.app.send_task(task, args=list(args), **options)

    def reconcile(self) -> None:
        self.send("vip_bundle.reconcile", queue=COMPENSATION)

    # --- observing ---
    def statuses(self, ids: Iterable[str]) -> dict[str, Status | None]:
        out: dict[str, Status | None] = {}
        for bundle_id in ids:
            try:
                bundle = self.store.get(bundle_id)
            except RedisError:  # the broker-restart scenario reads through the outage
                bundle = None
            out[bundle_id] = bundle.status if bundle else None
        return out

    def wait(
        self,
        ids: Iterable[str] | None = None,
        until: frozenset[Status] = FINAL,
        timeout: float = 180,
    ) -> dict[str, Status | None]:
        """Wait until every bundle is in `until` (default: final); return the last statuses.

        Never fails by itself: the invariants then say what is stuck or lost.
        """
        pending = set(self.submitted if ids is None else ids)
        last: dict[str, Status | None] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            last.update(self.statuses(pending))
            pending = {i for i in pending if last[i] not in until}
            if pending:
                time.sleep(0.25)
        return last

    def heal(self, timeout: float = 120) -> tuple[dict[str, Status | None], float]:
        """The partners are back: clear the faults, start beat (the reconciler every second),
        wait until every bundle is final. The last statuses, and how long healing took."""
        self.sim.clear_faults()
        back_at = time.monotonic()
        self.start_beat(RECONCILE_EVERY_S="1")
        statuses = self.wait(timeout=timeout)
        return statuses, time.monotonic() - back_at

    def bundle(self, bundle_id: str) -> Bundle:
        return self.store.require(bundle_id)

    def check(self, allow_parked: bool = False) -> invariants.Report:
        """Every invariant, then the product's own audit against the partners' books: each
        scenario must leave `vip-bundles audit` clean."""
        report = invariants.check(
            self.store,
            self.sim,
            self.submitted,
            self.capacity,
            allow_parked=allow_parked,
            archive=self.archive,
        )
        for finding in self.audit():
            report.counts.audit_findings += 1
            report.violations.append(
                f"{finding['vip_bundle_id']}: audit {finding['kind']}: {finding['description']}"
            )
        return report

    def audit(self) -> list[dict[str, Any]]:
        """`vip-bundles audit --json`, run as an operator runs it, on this scenario's stack."""
        done = subprocess.run(
            [sys.executable, "-m", "vip_bundles", "audit", "--json"],
            env=self.env(),
            cwd=local_stack.ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode not in (0, 1):
            raise AssertionError(f"vip-bundles audit failed ({done.returncode}): {done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def faults_left(self) -> int:
        """Fault rules not yet spent (a held call has taken its rule)."""
        return len(httpx.get(f"{self.sim_url}/_sim/faults", timeout=10).json()["faults"])


def _code_of(release: PreviousRelease | None) -> dict[str, Any]:
    """Which interpreter and tree run a process: ours, or the previous release's."""
    return {} if release is None else {"python": str(release.python), "cwd": release.src}


def received(worker: local_stack.Worker) -> dict[str, str]:
    """Task id -> task name for every message the worker received (from its log)."""
    return {m[2]: m[1] for m in _RECEIVED.finditer(_log(worker))}


def received_again(worker: local_stack.Worker) -> int:
    """Messages this worker received more than once (given back by the broker)."""
    ids = Counter(m[2] for m in _RECEIVED.finditer(_log(worker)))
    return sum(1 for n in ids.values() if n > 1)


def log_count(worker: local_stack.Worker, needle: str) -> int:
    return _log(worker).count(needle)


def reconciled(worker: local_stack.Worker) -> Counter[str]:
    """What the reconciler took up in this worker, summed from its log lines."""
    total: Counter[str] = Counter()
    for counts in _RECONCILED.findall(_log(worker)):
        total.update(ast.literal_eval(counts))
    return total


def _log(worker: local_stack.Worker) -> str:
    return worker.logfile.read_text(errors="replace") if worker.logfile.exists() else ""

"""What a section costs: Redis commands and server time, CPU per process, simulator load.

A `Meter` is read before and after the measured flows; the difference is the section's cost.
The driver's own waiting commands (XREAD, BLPOP, ...) are counted and taken out again.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from bench.stack import QUEUES, Stack, cpu_seconds


@dataclass
class Snapshot:
    at: float
    commands: Counter[str]
    usec: Counter[str]
    redis_cpu: float
    worker_cpu: float
    worker_main_cpu: float
    sim_cpu: float
    driver_cpu: float
    sim_requests: int
    clients: int
    machine: tuple[float, float]  # /proc/stat: (busy, total) jiffies of every core, everyone's


@dataclass
class Cost:
    """A section's cost, divided by its flows where it says per_flow."""

    wall_s: float
    flows: int
    commands: Counter[str]  # totals, driver's own waits removed
    redis_usec: int
    cpu_s: dict[str, float]
    sim_requests: int
    sim_probe_ms: list[float] = field(default_factory=list)
    redis_clients: int = 0  # connected clients: only the run's own with --private-redis
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    queued: list[int] = field(default_factory=list)  # messages waiting in the broker, sampled
    machine_busy: float = 0.0  # share of all cores busy (every process, not only the run's)

    def queued_mean(self) -> float:
        return statistics.mean(self.queued) if self.queued else 0.0

    def commands_per_flow(self) -> float:
        return sum(self.commands.values()) / self.flows

    def top_commands(self, n: int = 12) -> dict[str, float]:
        return {k: round(v / self.flows, 2) for k, v in self.commands.most_common(n)}

    def as_dict(self) -> dict[str, Any]:
        probe = sorted(self.sim_probe_ms)
        return {
            "wall_s": round(self.wall_s, 3),
            "commands_per_flow": round(self.commands_per_flow(), 2),
            "commands_by_name_per_flow": self.top_commands(40),
            "redis_usec_per_flow": round(self.redis_usec / self.flows, 1),
            "cpu_share_of_wall": {k: round(v / self.wall_s, 3) for k, v in self.cpu_s.items()},
            "simulator": {
                "requests_per_s": round(self.sim_requests / self.wall_s, 1),
                "requests_per_flow": round(self.sim_requests / self.flows, 2),
                "cpu_share": round(self.cpu_s["simulator"] / self.wall_s, 3),
                "probe_ms_p50": round(statistics.median(probe), 2) if probe else None,
                "probe_ms_max": round(probe[-1], 2) if probe else None,
            },
            "redis_clients": self.redis_clients,
            "loadavg": self.loadavg,
            "queued_mean": round(self.queued_mean(), 1),
            "machine_busy": round(self.machine_busy, 3),
        }


class Meter:
    """Reads the run's processes, Redis and the simulator; `start()`/`stop()` bracket a section."""

    def __init__(self, stack: Stack, r: redis.Redis) -> None:
        self.stack = stack
        self.r = r
        self.http = httpx.Client(base_url=stack.sim_url, timeout=5)
        self._queues = stack.client()  # the probe thread's own connection
        self._probe_ms: list[float] = []
        self._queued: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> Snapshot:
        info = self.r.info("all")  # one INFO: commandstats, cpu and clients together
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for name, s in info.items():
            if name.startswith("cmdstat_"):
                cmd = name.removeprefix("cmdstat_")
                calls[cmd] = int(s["calls"])
                usec[cmd] = int(s["usec"])
        last_seq = self.http.get("/_sim/calls", params={"since": 10**15}).json()["last_seq"]
        return Snapshot(
            at=time.monotonic(),
            commands=calls,
            usec=usec,
            redis_cpu=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            worker_cpu=sum(cpu_seconds(pid) for pid in self._workers()),
            worker_main_cpu=sum(cpu_seconds(pid, children=False) for pid in self._workers()),
            sim_cpu=cpu_seconds(self.stack.sim_pid),
            driver_cpu=time.process_time(),
            sim_requests=int(last_seq),
            clients=int(info["connected_clients"]),
            machine=_machine_jiffies(),
        )

    def _workers(self) -> list[int]:
        return self.stack.worker_pids or [self.stack.worker_pid]

    def start(self) -> Snapshot:
        self._probe_ms, self._queued = [], []
        self._stop.clear()
        self._thread = threading.Thread(target=self._probe, daemon=True)
        self._thread.start()
        return self.snapshot()

    def stop(self, before: Snapshot, flows: int, own: Counter[str]) -> Cost:
        after = self.snapshot()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        commands = after.commands - before.commands
        usec = after.usec - before.usec
        # Take out what only measures: the meter's INFO and the driver's waits for results.
        measuring = Counter(own) + Counter(info=commands["info"])
        for name, n in measuring.items():
            if commands[name]:
                usec[name] -= int(usec[name] * min(n / commands[name], 1.0))
            commands[name] -= n
        commands, usec = +commands, +usec  # drop zero and negative counts
        return Cost(
            wall_s=after.at - before.at,
            flows=flows,
            commands=commands,
            redis_usec=sum(usec.values()),
            cpu_s={
                "worker": after.worker_cpu - before.worker_cpu,
                "worker_main": after.worker_main_cpu - before.worker_main_cpu,
                "simulator": after.sim_cpu - before.sim_cpu,
                "redis": after.redis_cpu - before.redis_cpu,
                "driver": after.driver_cpu - before.driver_cpu,
            },
            sim_requests=after.sim_requests - before.sim_requests,
            sim_probe_ms=list(self._probe_ms),
            redis_clients=max(before.clients, after.clients),
            loadavg=os.getloadavg(),
            queued=list(self._queued),
            machine_busy=(after.machine[0] - before.machine[0])
            / max(after.machine[1] - before.machine[1], 1),
        )

    def _probe(self) -> None:
        """The simulator's own latency while the section runs (a control path, not logged)."""
        while not self._stop.wait(0.25):
            t = time.perf_counter()
            try:
                self.http.get("/_sim/health")
            except httpx.HTTPError:
                continue
            self._probe_ms.append((time.perf_counter() - t) * 1000)
            # Messages no worker has taken yet: above ~0 the pool (or its CPU) is the limit.
            with contextlib.suppress(redis.RedisError):
                pipe = self._queues.pipeline(transaction=False)
                for queue in QUEUES:
                    pipe.llen(queue)
                self._queued.append(sum(pipe.execute()))


def _machine_jiffies() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine so far, every core and every process."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)

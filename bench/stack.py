"""What one benchmark run stands on: a Redis database of its own, the simulator, the workers.

Everything here is started by the run and stopped by it. The run claims an unused database on
the Redis server of REDIS_URL (or on a private redis-server with --private-redis), as
deployments sharing a Redis are told apart, and empties it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from adapters.settings import get_settings
from partner_simulator.server import start_subprocess
from vip_bundles import local_stack

# celeryconfig's queues (not imported from there: it reads the settings when imported).
QUEUES = ("vip-bundles", "vip-bundles.booking", "vip-bundles.compensation")
# As `worker --include`; the probe does nothing unless BENCH_CPU_PROBE is set.
BASELINE_MODULE = "bench.baseline_tasks,bench.floor_tasks,bench.peer_tasks,bench.cpu_probe"


@dataclass
class Stack:
    prefix: str
    redis_url: str
    redis_how: str
    sim_url: str
    sim_pid: int
    worker_pid: int  # the first worker's main process
    worker_log: Path
    settings: dict[str, object] = field(default_factory=dict)
    worker_pids: list[int] = field(default_factory=list)  # every worker's main process

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@dataclass(frozen=True)
class Shape:
    """How the workers of one host are laid out: `processes` x `celery worker -P pool -c C`,
    each consuming every queue; or, with `undo`, the README's production lines: those
    processes on the intake and booking queues, plus one `-c undo` on the compensation queue."""

    pool: str = "prefork"
    concurrency: int = 2
    processes: int = 1
    undo: int = 0  # concurrency of a compensation-queue worker of its own (0: none)

    @classmethod
    def parse(cls, text: str) -> Shape:
        """`threads:2x32` (2 worker processes, -P threads -c 32), `prefork:8` (1 x -c 8),
        `threads:3x64+16` (3 x -c 64 booking, 1 x -c 16 undo)."""
        pool, _, size = text.partition(":")
        size, _, undo = size.partition("+")
        processes, _, concurrency = size.rpartition("x")
        pools = ("prefork", "threads", "gevent", "eventlet", "solo")
        if pool not in pools or not concurrency.isdigit() or not (undo or "0").isdigit():
            raise ValueError(f"shape {text!r}: expected POOL:[PROCESSESx]CONCURRENCY[+UNDO]")
        return cls(pool, int(concurrency), int(processes or 1), int(undo or 0))

    @property
    def slots(self) -> int:
        """Slots for booking steps (the undo worker's are for rollbacks only)."""
        return self.processes * self.concurrency

    def spec(self) -> str:
        """The text `parse` reads back."""
        return f"{self.pool}:{self.processes}x{self.concurrency}+{self.undo}"

    def label(self, code: str = "") -> str:
        """`3 x -P threads -c 64 + 1 x -c 16 undo`; `code="`"` quotes the options (markdown)."""
        booking = f"{self.processes} x {code}-P {self.pool} -c {self.concurrency}{code}"
        return f"{booking} + 1 x {code}-c {self.undo}{code} undo" if self.undo else booking


@contextlib.contextmanager
def running(
    pool: str,
    concurrency: int,
    private_redis: bool,
    *,
    processes: int = 1,
    latency_ms: int = 0,
    jitter_ms: int = 0,
    undo_concurrency: int = 0,
    tls: bool = False,
) -> Iterator[Stack]:
    """Start Redis (if need be), the simulator (answering after `latency_ms` +- `jitter_ms`)
    and `processes` workers; stop them and delete the keys. With `undo_concurrency`, the
    workers split the queues as the README's production lines do: `processes` on intake and
    booking, one more (`-c undo_concurrency`) on the compensation queue."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if tls:  # a private TLS-only redis-server (tests/tls_redis.py), database 0 all ours
        found, db = _tls_redis()
    else:
        found = local_stack.start_redis_server() if private_redis else local_stack.ensure_redis(url)
        # A database of the run's own on that server: no other worker consumes its queues,
        # and nothing of anyone else's is touched. Claimed before anything reads the settings.
        db = local_stack.claim_database(local_stack.server_url_of(found.url))
    sim_proc: subprocess.Popen[bytes] | None = None
    workers: list[local_stack.Worker] = []
    logdir: Path | None = Path(tempfile.mkdtemp(prefix="vip-bundles-bench-"))
    try:
        sim_proc, sim_url = start_subprocess(latency_ms=latency_ms, jitter_ms=jitter_ms)
        # Settings are read once per process: set them before anything imports `tasks`.
        env = {"REDIS_URL": db.url, "GATEWAY_URL": sim_url}
        os.environ.update(env)
        for name in ("BROKER_URL", "RESULT_BACKEND", "KEY_PREFIX"):  # defaults, on this Redis
            os.environ.pop(name, None)
        prefix = get_settings().key_prefix
        # The one change to a production worker: it also loads the baseline's and the floor's
        # tasks (bench/floor_tasks.py).
        # Celery's CLI reads CELERY_WORKER_INCLUDE as `worker --include`, so local_stack,
        # celeryconfig and the task list stay as they are.
        worker_env = local_stack.celery_env(**env, CELERY_WORKER_INCLUDE=BASELINE_MODULE)
        intake, booking, undo = QUEUES
        lines = [(concurrency, [intake, booking] if undo_concurrency else None)] * processes
        if undo_concurrency:
            lines.append((undo_concurrency, [undo]))
        for slots, queues in lines:
            workers.append(
                local_stack.start_worker(
                    worker_env,
                    name=f"bench-{uuid.uuid4().hex[:8]}@localhost",
                    concurrency=slots,
                    pool=pool,
                    queues=queues,
                    logdir=logdir,
                )
            )
        settings = worker_settings(pool, concurrency)
        settings |= {"processes": processes, "partner_latency_ms": latency_ms}
        settings["undo_concurrency"] = undo_concurrency
        settings["partner_jitter_ms"] = jitter_ms
        yield Stack(
            prefix=prefix,
            redis_url=db.url,
            redis_how=found.how,
            sim_url=sim_url,
            sim_pid=sim_proc.pid,
            worker_pid=workers[0].process.pid,
            worker_log=workers[0].logfile,
            settings=settings,
            worker_pids=[w.process.pid for w in workers],
        )
    except BaseException:
        print(f"worker log kept in {logdir}", file=sys.stderr)
        logdir = None  # kept: it says what went wrong
        raise
    finally:
        for worker in workers:
            worker.stop()
        if sim_proc is not None:
            local_stack.stop_process(sim_proc)
        db.release()
        found.stop()
        if logdir is not None:
            shutil.rmtree(logdir, ignore_errors=True)


def _tls_redis() -> tuple[local_stack.LocalRedis, local_stack.ClaimedDatabase]:
    """A TLS-only redis-server with a CA made now (no client certificate asked for): every
    process of the run (workers, driver) reaches it with `rediss://...&ssl_ca_certs=...`."""
    from tests.tls import CA
    from tests.tls_redis import start

    workdir = tempfile.TemporaryDirectory(prefix="vip-bundles-bench-tls-")
    where = Path(workdir.name)
    server = start(CA(where), {"bench": ("bench-password", "~* &* +@all")}, workdir=where)
    url = server.url("bench", "bench-password", db=0)
    found = local_stack.LocalRedis(
        url, f"started a TLS redis-server on localhost:{server.port}", server.process, None, workdir
    )
    return found, local_stack.ClaimedDatabase(url, 0, redis.Redis.from_url(url))


def worker_settings(pool: str, concurrency: int) -> dict[str, object]:
    from tasks.celery_app import app

    c = app.conf
    return {
        "pool": pool,
        "concurrency": concurrency,
        "prefetch_multiplier": c.worker_prefetch_multiplier,
        "acks_late": c.task_acks_late,
        "task_events": c.worker_send_task_events,
        "sent_events": c.task_send_sent_event,
        "track_started": c.task_track_started,
        "result_extended": c.result_extended,
        "loglevel": "INFO",
    }


# --- CPU of the processes we started -------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process and its live descendants (a worker and its pool)."""
    total = 0
    for p in _descendants(pid) if children else [pid]:
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as f:
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICK

"""CPU per task and per part, measured inside the benchmark's worker (`BENCH_CPU_PROBE=DIR`).

py-spy (`--profile`) samples wall time, and on two shared cores a process waiting for a core
looks as busy as one using it. This probe reads `time.thread_time()` around every task and
around the parts named in PARTS instead, in each pool process, and writes the sums to
DIR/<pid>.json every 2 s. Each figure is filed under the side whose task ran it (chain, floor
or saga, by task name), so one `bench.ab floor` run gives all three. Loaded by the
benchmark's worker only (with the baseline's tasks); it does nothing unless BENCH_CPU_PROBE
is set, so the figures of a normal run are untouched.

    BENCH_CPU_PROBE=build/probe python -m bench.ab floor --rounds 1 --flows 1000 --private-redis
    BENCH_CPU_PROBE_PARTS=tasks.steps:record,adapters.telemetry:annotate ...   # parts of your own
    python -m bench.cpu_probe build/probe 1008     # us per flow, by side, task and part

The flow count to divide by is each side's, warm-up included (`bench.ab`: rounds x (flows +
2 x window)). Clear DIR between runs: the sums are per process, from its start.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

# (module, attribute path): wrapped in place, so callers that look them up at call time see it.
PARTS = [
    ("adapters.store", "BundleStore.create"),
    ("adapters.store", "BundleStore.start_all"),
    ("adapters.store", "BundleStore.apply"),
    ("adapters.store", "BundleStore._write"),
    ("adapters.store", "bundle_from_hash"),  # as store.py looks it up
    ("tasks.steps", "due_all"),
    ("tasks.intake", "book_bundle"),
    ("adapters.partners", "Partners.book_show_tickets"),
    ("adapters.partners", "Partners.book_flight"),
    ("celery.app.task", "Task.apply_async"),
    ("celery.backends.base", "Backend.store_result"),
    ("redis.commands.core", "Script.__call__"),
    ("logging", "Logger.handle"),
]

SIDES = {"bench.baseline.": "chain", "bench.floor.": "floor", "vip_bundle.": "saga"}
_sums: dict[str, list[float]] = {}  # "side name" -> [CPU seconds, calls]
_lock = threading.Lock()  # a `-P threads` process runs many tasks at once
_running = threading.local()  # .side: the side of the task running in this thread


def _add(name: str, seconds: float) -> None:
    with _lock:
        entry = _sums.setdefault(f"{getattr(_running, 'side', '-')} {name}", [0.0, 0])
        entry[0] += seconds
        entry[1] += 1


def _wrap(module: str, path: str) -> None:
    owner: Any = importlib.import_module(module)
    *outer, attr = path.split(".")
    for name in outer:
        owner = getattr(owner, name)
    original: Callable[..., Any] = getattr(owner, attr)
    label = f"{module}.{path}"

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            _add(label, time.thread_time() - started)

    setattr(owner, attr, timed)


_task_started: dict[str, float] = {}


_installed_in = 0  # the pid it was installed in


def _install(**_: Any) -> None:
    global _installed_in
    if _installed_in == os.getpid():
        return
    _installed_in = os.getpid()
    Path(os.environ["BENCH_CPU_PROBE"]).mkdir(parents=True, exist_ok=True)
    # BENCH_CPU_PROBE_PARTS="module:Attr.path,...": more parts, for a closer look at one change.
    named = os.environ.get("BENCH_CPU_PROBE_PARTS", "").split(",")
    extra = [(part.split(":", 1)[0], part.split(":", 1)[1]) for part in named if ":" in part]
    for module, path in PARTS + extra:
        _wrap(module, path)
    task_prerun.connect(_on_prerun, weak=False)
    task_postrun.connect(_on_postrun, weak=False)
    worker_process_shutdown.connect(_dump, weak=False)

    def every_2_s() -> None:
        while True:
            time.sleep(2)
            _dump()

    threading.Thread(target=every_2_s, daemon=True, name="cpu-probe").start()


def _dump(**_: Any) -> None:
    out = Path(os.environ["BENCH_CPU_PROBE"]) / f"{os.getpid()}.json"
    with _lock:
        text = json.dumps(_sums)
    out.write_text(text)


def _on_prerun(task_id: str, task: Any, **_: Any) -> None:
    _running.side = next((s for prefix, s in SIDES.items() if task.name.startswith(prefix)), "-")
    _task_started[task_id] = time.thread_time()


def _on_postrun(task_id: str, task: Any, **_: Any) -> None:
    started = _task_started.pop(task_id, None)
    if started is not None:
        _add(f"task {task.name}", time.thread_time() - started)


if os.environ.get("BENCH_CPU_PROBE"):
    # Pool processes of prefork; the worker process itself for `-P threads` (where it runs the
    # tasks; on prefork it runs none, so its sums stay empty).
    worker_process_init.connect(_install, weak=False)
    worker_ready.connect(_install, weak=False)


def main(argv: list[str]) -> None:
    directory, flows = Path(argv[0]), int(argv[1])
    totals: dict[str, list[float]] = {}
    for path in directory.glob("*.json"):
        for name, (seconds, calls) in json.loads(path.read_text()).items():
            entry = totals.setdefault(name, [0.0, 0])
            entry[0] += seconds
            entry[1] += calls
    for name, (seconds, calls) in sorted(totals.items(), key=lambda kv: (kv[0][:5], -kv[1][0])):
        print(
            f"{seconds * 1e6 / flows:8.0f} us/flow {calls / flows:6.2f} calls/flow "
            f"{seconds * 1e6 / max(calls, 1):7.0f} us/call  {name}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

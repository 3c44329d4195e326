"""`--profile DIR`: sample the worker (main process and pool) with py-spy during each section.

py-spy is a tool, not a dependency: it is looked up on PATH (or $PY_SPY). The raw output is one
collapsed stack per line; `python -m bench.profile FILE...` sums it by library, which is what
tells a saga's cost from Celery's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# First match wins: a frame's file path names the library it belongs to.
# py-spy writes "function (package/module.py:line)", the path relative to sys.path.
AREAS = [
    ("(process_manager/", "saga: process_manager"),
    ("(tasks/", "saga: tasks"),
    ("(bench/", "bench"),
    ("(pydantic", "pydantic"),
    ("(celery/", "celery"),
    ("(kombu/", "kombu"),
    ("(billiard/", "billiard (prefork)"),
    ("(redis/", "redis-py"),
    ("(httpx/", "httpx"),
    ("(httpcore/", "httpx"),
    ("(h11/", "httpx"),
    ("(tenacity/", "tenacity"),
    ("(logging/", "logging"),
    ("(json/", "json"),
    ("(uuid.py", "uuid"),
    ("(vip_bundles/", "vip_bundles"),
]


@contextlib.contextmanager
def sampled(pid: int, out: Path | None) -> Iterator[None]:
    """Run py-spy on `pid` and its children while the block runs (nothing if `out` is None)."""
    if out is None:
        yield
        return
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if exe is None:
        raise FileNotFoundError("--profile needs py-spy on PATH (pip install py-spy) or $PY_SPY")
    args = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil"]
    args += ["--rate", "200", "--format", "raw", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attach to every pool process before the section starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def area(frame: str) -> str | None:
    return next((name for needle, name in AREAS if needle in frame), None)


def summarize(path: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """Samples: in all, by library of the innermost frame, by library anywhere, by function.

    `by function` also counts samples of the worker's main process (one "process" frame) and
    of its pool children (two), which says whether the consumer or the tasks are busiest.
    """
    total, own, inclusive, functions = 0, Counter[str](), Counter[str](), Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[next((a for f in reversed(frames) if (a := area(f))), "other")] += n
        functions[frames[-1].rsplit(":", 1)[0]] += n
        nested = sum(1 for f in frames[:2] if f.startswith("process "))
        functions["[main process]" if nested == 1 else "[pool processes]"] += n
        for name in {a for f in frames if (a := area(f))}:
            inclusive[name] += n
    return total, own, inclusive, functions


def main(paths: list[str]) -> None:
    for p in paths:
        total, own, inclusive, functions = summarize(Path(p))
        print(f"{p}: {total} samples (busy only)")
        for name, n in own.most_common():
            share, incl = 100 * n / total, 100 * inclusive[name] / total
            print(f"  {name:<24} self {share:5.1f}%  incl {incl:5.1f}%")
        print("  hottest functions (self):")
        for name, n in functions.most_common(25):
            print(f"    {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])

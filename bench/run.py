"""One benchmark run: start the stack, run every section, print and save the figures."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.meter import Meter
from bench.stack import Stack, running

if TYPE_CHECKING:  # importing bench.sections imports `tasks`, which reads the settings
    from bench.sections import Section

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Options:
    bundles: int
    concurrency: tuple[int, ...]
    pool: str
    window: int
    seed_small: int
    seed_large: int
    json_path: str | None
    private_redis: bool
    quick: bool
    rounds: int = 3
    light_flows: int = 100
    profile_dir: str | None = None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return {
        "nproc": os.cpu_count(),
        "cpu_model": names[0] if names else platform.processor(),
        "python": platform.python_version(),
        "celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "redis_py": metadata.version("redis"),
        "loadavg_at_start": os.getloadavg(),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and which files differed from it (read-only git)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=ROOT)
        return done.stdout.strip()

    changed = git("--no-optional-locks", "status", "--short", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": changed.splitlines()}


def main(opts: Options) -> int:
    figures: dict[str, Any] = {"command": " ".join(sys.argv), "options": vars(opts)}
    figures["machine"] = machine()
    figures["code"] = code_version()
    figures["runs"] = {}
    try:
        # One worker per concurrency, each run on a fresh database: the same sections at 2 and 4.
        for concurrency in opts.concurrency:
            say(f"=== concurrency {concurrency} ===")
            with running(opts.pool, concurrency, opts.private_redis) as stack:
                window = opts.window or 2 * concurrency
                figures["runs"][str(concurrency)] = _sections(stack, opts, window)
    except Exception as exc:  # a stalled or broken run still says what it got
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        figures["error"] = f"{type(exc).__name__}: {exc}"
    figures["machine"]["loadavg_at_end"] = os.getloadavg()
    if opts.json_path:
        out = Path(opts.json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(figures, indent=2, default=str))
    if "error" in figures:
        return 2
    return 1 if any(run["errors"] for run in figures["runs"].values()) else 0


def _sections(stack: Stack, opts: Options, window: int) -> dict[str, Any]:
    # Imported here: `tasks` reads its settings once, and the stack has just set them.
    from bench import report
    from bench.sections import RETURN_ID, Bench, Load, request
    from bench.seed import seed, stored
    from tasks.celery_app import store

    r = stack.client()
    profile = Path(opts.profile_dir) if opts.profile_dir else None
    bench = Bench(Meter(stack, r), r, profile)
    redis_version = r.info("server")["redis_version"]
    say(f"redis {redis_version}: {stack.redis_how}; prefix {stack.prefix}")
    say(f"simulator {stack.sim_url} (pid {stack.sim_pid}); worker log {stack.worker_log}")
    say(f"worker: {stack.settings}")

    background = _background(bench.meter)
    if background > 20:
        say(
            f"WARNING: {background:.0f} Redis commands/s from others while idle: command counts "
            "include their traffic (use --private-redis for exact counts)"
        )
    kinds: dict[str, list[Section]] = {k: [] for k in report.KINDS}
    loaded, light = Load(opts.bundles, window), Load(opts.light_flows, 1)
    seeded = {"small": seed(r, store(), opts.seed_small, request(RETURN_ID))}
    stored_small = stored(store())
    sold_out = bench.sold_out(stack.sim_url)
    for i in range(opts.rounds):
        say(f"round {i + 1}/{opts.rounds}, {stored(store()):,} stored: {loaded.label()} ...")
        kinds["baseline"].append(bench.baseline(loaded))
        kinds["floor"].append(bench.floor(loaded))
        kinds["success"].append(bench.saga("success", loaded, RETURN_ID, rollback=False))
        kinds["rollback"].append(bench.saga("rollback", loaded, sold_out, rollback=True))
        say(f"round {i + 1}/{opts.rounds}: {light.label()} ...")
        kinds["baseline_light"].append(bench.baseline(light))
        kinds["success_light"].append(bench.saga("success-light", light, RETURN_ID, False))
        kinds["rollback_light"].append(bench.saga("rollback-light", light, sold_out, True))
    seeded["large"] = seed(r, store(), opts.seed_large, request(RETURN_ID))
    stored_large = stored(store())
    for i in range(opts.rounds):
        say(f"round {i + 1}/{opts.rounds}, {stored(store()):,} stored: {loaded.label()} ...")
        kinds["baseline_large"].append(bench.baseline(loaded))
        kinds["success_large"].append(bench.saga("success-large", loaded, RETURN_ID, False))

    label = dict(report.KINDS)
    label["success"] += f" ({_stored_range(kinds['success'])} stored)"
    label["baseline_large"] += f" ({_stored_range(kinds['success_large'])} stored)"
    label["success_large"] += f" ({_stored_range(kinds['success_large'])} stored)"
    rows = [(label[k], kinds[k]) for k in report.KINDS]
    ratio = report.ratios(kinds)
    code = code_version()
    print(f"\nvip-bundles benchmark at {code['commit']} (changed: {', '.join(code['changed'])})")
    print(f"worker {stack.settings}")
    print(f"{opts.rounds} rounds; under load: {loaded.label()}; one at a time: {light.label()}\n")
    print(report.table(rows))
    print()
    print(report.text(ratio))
    print()
    print(report.commands(rows))
    print(report.simulator(rows))
    errors = [f"{n}: {s.errors[:3]}" for n, ss in rows for s in ss if s.errors]
    for line in errors:
        print(f"ERRORS in {line}")
    return {
        "redis": {"version": redis_version, "how": stack.redis_how},
        "worker": stack.settings,
        "load": {"under_load": vars(loaded), "one_at_a_time": vars(light), "rounds": opts.rounds},
        "redis_background_commands_per_s": round(background, 1),
        "stored": {"small": stored_small, "large": stored_large},
        "seeding_s": {k: round(v, 2) for k, v in seeded.items()},
        "sections": {k: [s.as_dict() for s in kinds[k]] for k in report.KINDS},
        "ratios": ratio,
        "errors": errors,
    }


def _stored_range(sections: list[Section]) -> str:
    """How many bundles were stored when the rounds began ("1k-3k": each round adds some)."""
    counts = [s.extra["stored_before"] for s in sections]
    low, high = (f"{n / 1000:.0f}k" if n >= 1000 else str(n) for n in (min(counts), max(counts)))
    return low if low == high else f"{low}-{high}"


def _background(meter: Meter) -> float:
    """Redis commands per second while the run is idle: ~0 unless someone else uses it."""
    before = meter.snapshot()
    time.sleep(1.0)
    after = meter.snapshot()
    calls = after.commands - before.commands
    calls.pop("info", None)
    return sum(calls.values()) / (after.at - before.at)

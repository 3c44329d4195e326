"""`python -m bench.capacity`: throughput at the partners' real speed, per worker pool shape.

For each partner latency (the simulator answers every call after L ms +- a uniform jitter) and
each worker shape (`processes x celery worker -P pool -c C` on this host), one stack of its own;
in it, interleaved rounds of the bare chain and the saga under load (a closed loop keeping
`window` flows in flight), optionally rollbacks and chains one at a time. Per configuration:
flows/s (median of rounds), saga / chain per round, p50 / p99, CPU per bundle (the workers
alone, and the whole run: workers, Redis, simulator, driver), messages waiting in the broker,
and what saturates (`bench/capacity_report.py`). Method and figures: docs/performance.md.

    .venv/bin/python -m bench.capacity --light-flows 20 --private-redis --json build/capacity.json \
        --markdown build/capacity.md                  # docs/performance.md's figures
    .venv/bin/python -m bench.capacity --latency 200 --shapes threads:3x64+16 --window 64 \
        --flows-per-window 10 --private-redis         # below saturation
    .venv/bin/python -m bench.capacity --quick        # seconds: two latencies, two shapes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this file is in

from bench.capacity_report import configuration, markdown, table
from bench.run import code_version, machine, say
from bench.stack import Shape, running

# Celery's default, prefork at the size a partner's latency needs, the previous round's
# recommendation and the README's production lines (3 booking processes, one undo worker).
DEFAULT_SHAPES = "prefork:2,prefork:16,threads:2x64,threads:3x64+16"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    p.add_argument("--latency", default="0,50,200", help="partner latencies, ms, comma-separated")
    p.add_argument("--jitter-pct", type=int, default=25, help="jitter, % of the latency (+-)")
    p.add_argument(
        "--shapes",
        default=DEFAULT_SHAPES,
        help="POOL:[PROCESSESx]CONCURRENCY[+UNDO],...; +UNDO: the README's production lines "
        "(those processes on intake and booking, one -c UNDO on the compensation queue)",
    )
    p.add_argument("--window-per-slot", type=float, default=1.5, help="flows in flight per slot")
    p.add_argument("--window", type=int, default=0, help="flows in flight (overrides the above)")
    p.add_argument("--flows-per-window", type=float, default=4.0, help="flows per section")
    p.add_argument("--min-flows", type=int, default=60)
    p.add_argument(
        "--section-s",
        type=float,
        default=12.0,
        help="cap a section's flows at about this long at what the pool allows (slow shapes)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--light-flows", type=int, default=0, help="chain and rollback one at a time, per round"
    )
    p.add_argument("--private-redis", action="store_true", help="an own redis-server")
    p.add_argument("--json", dest="json_path", default=None)
    p.add_argument("--markdown", default=None, help="also write docs/performance.md's tables here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "SHAPE@LATENCY": one child
    args = p.parse_args(argv)
    if args.quick:
        args.latency, args.shapes, args.rounds = "0,50", "prefork:2,threads:8+2", 1
        args.min_flows, args.flows_per_window, args.light_flows = 8, 1.0, 3
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.one:
        return _one(args)
    shapes = [Shape.parse(s) for s in args.shapes.split(",")]
    latencies = [int(x) for x in str(args.latency).split(",")]
    figures: dict[str, Any] = {"command": " ".join(sys.argv), "options": vars(args)}
    figures |= {"machine": machine(), "code": code_version(), "configurations": []}
    figures["machine"]["calibration_cpu_s_at_start"] = calibration()
    worst = 0
    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="vip-bundles-capacity-") as tmp:
        # One process per configuration: settings (the Redis database the tasks use) are read
        # once per process, and each configuration has a stack of its own.
        for latency in latencies:
            for shape in shapes:
                one = f"{shape.spec()}@{latency}"
                out = Path(tmp) / f"{one.replace(':', '-')}.json"
                say(f"=== partner latency {latency} ms, {shape.label()} ===")
                code = subprocess.call(
                    [
                        sys.executable,
                        "-m",
                        "bench.capacity",
                        *argv,
                        "--one",
                        one,
                        "--json",
                        str(out),
                    ]
                )
                worst = max(worst, code)
                if out.exists():
                    figures["configurations"].append(json.loads(out.read_text()))
    figures["machine"]["loadavg_at_end"] = os.getloadavg()
    figures["machine"]["calibration_cpu_s_at_end"] = calibration()
    m = figures["machine"]
    print(
        f"\nvip-bundles capacity at {figures['code']['commit']};"
        f" load average {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end"
    )
    print(
        f"calibration (CPU s of a fixed loop: more when the cores are shared):"
        f" {m['calibration_cpu_s_at_start']:.2f} at start,"
        f" {m['calibration_cpu_s_at_end']:.2f} at end"
    )
    print(table(figures["configurations"]))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(figures, indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(markdown(figures["configurations"]))
    return worst


def calibration() -> float:
    """CPU seconds of a fixed pure-Python loop: how fast a core is right now. On shared cores
    (SMT siblings, other tenants) the same work costs more CPU time, CPU per bundle included."""
    started = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - started


def _one(args: argparse.Namespace) -> int:
    """One configuration, in this process: its stack, its rounds, its figures as JSON."""
    text, _, latency_text = args.one.partition("@")
    shape, latency = Shape.parse(text), int(latency_text)
    jitter = latency * args.jitter_pct // 100
    window = args.window or max(1, math.ceil(shape.slots * args.window_per_slot))
    flows = max(args.min_flows, math.ceil(window * args.flows_per_window))
    # A small pool at slow partners does a few bundles a second: keep its sections short.
    pool_limit = shape.slots / (3 * latency / 1000 + 0.01)
    flows = min(flows, max(2 * window, 8, math.ceil(pool_limit * args.section_s)))
    out: dict[str, Any] = {"shape": vars(shape), "latency_ms": latency, "jitter_ms": jitter}
    out["calibration_cpu_s"] = calibration()  # how fast a core is now (it varies on this host)
    out |= {"window": window, "flows": flows, "rounds": args.rounds}
    try:
        with running(
            shape.pool,
            shape.concurrency,
            args.private_redis,
            processes=shape.processes,
            latency_ms=latency,
            jitter_ms=jitter,
            undo_concurrency=shape.undo,
        ) as stack:
            # Imported here: `tasks` reads its settings once, and the stack has just set them.
            from bench.meter import Meter
            from bench.sections import RETURN_ID, Bench, Load

            r = stack.client()
            bench = Bench(Meter(stack, r), r)
            sold_out = bench.sold_out(stack.sim_url)
            load, light = Load(flows, window), Load(args.light_flows, 1)
            sections: dict[str, list[dict[str, Any]]] = {}
            for i in range(args.rounds):
                say(f"round {i + 1}/{args.rounds}: {load.label()}")
                chain = bench.baseline(load)
                saga = bench.saga("success", load, RETURN_ID, rollback=False)
                sections.setdefault("chain", []).append(_figures(chain))
                sections.setdefault("saga", []).append(_figures(saga))
                if args.light_flows:
                    base = bench.baseline(light)
                    back = bench.saga("rollback-light", light, sold_out, rollback=True)
                    sections.setdefault("chain_light", []).append(_figures(base))
                    sections.setdefault("rollback_light", []).append(_figures(back))
            out["worker"] = stack.settings
            out["sections"] = sections
    except Exception as exc:  # a stalled configuration still says what it got
        say(f"configuration failed: {type(exc).__name__}: {exc}")
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["summary"] = configuration(out)
    Path(args.json_path).write_text(json.dumps(out, indent=2, default=str))
    print(table([out], note=False), flush=True)
    if "error" in out:
        return 2
    return 1 if any(s["errors"] for ss in out.get("sections", {}).values() for s in ss) else 0


def _figures(section: Any) -> dict[str, Any]:
    """What a configuration's summary needs of one section (plus its raw latencies' spread)."""
    d = section.as_dict()
    cost = section.cost
    return {
        "flows": section.flows,
        "throughput": section.throughput,
        "p50_ms": section.p(50),
        "p99_ms": section.p(99),
        "mean_ms": sum(section.latency_ms) / len(section.latency_ms),
        "cpu_s": dict(cost.cpu_s),
        "wall_s": cost.wall_s,
        "queued_mean": cost.queued_mean(),
        "machine_busy": cost.machine_busy,
        "simulator": d["simulator"],
        "redis_usec_per_flow": d["redis_usec_per_flow"],
        "commands_per_flow": d["commands_per_flow"],
        "loadavg": d["loadavg"],
        "errors": section.errors,
    }


if __name__ == "__main__":
    sys.exit(main())

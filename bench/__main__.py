"""`python -m bench`: saga throughput and rollback latency against a bare Celery chain.

Figures, method and what they mean: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.run import Options, main


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--bundles", type=int, default=500, help="flows per section under load")
    p.add_argument(
        "--concurrency",
        default="2,4",
        help="worker pool sizes, comma-separated: the whole run once for each",
    )
    p.add_argument("--pool", default="prefork", help="worker pool (prefork, threads, solo)")
    p.add_argument(
        "--window",
        type=int,
        default=0,
        help="flows in flight at once (closed loop); default 2 x the concurrency",
    )
    p.add_argument("--seed-small", type=int, default=1_000, help="bundles stored, small case")
    p.add_argument("--seed-large", type=int, default=1_000_000, help="bundles stored, large case")
    p.add_argument(
        "--light-flows", type=int, default=0, help="flows one at a time; default bundles / 2"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternations of baseline and saga")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--json", dest="json_path", default=None, help="write every figure here")
    p.add_argument(
        "--private-redis",
        action="store_true",
        help="start an own redis-server, so INFO commandstats counts only this run",
    )
    p.add_argument(
        "--profile",
        dest="profile_dir",
        default=None,
        help="sample the worker with py-spy per section into this directory",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.bundles, args.seed_small, args.seed_large, args.rounds = 8, 50, 500, 1
    return Options(
        bundles=args.bundles,
        concurrency=tuple(int(c) for c in str(args.concurrency).split(",")),
        pool=args.pool,
        window=args.window,
        seed_small=args.seed_small,
        seed_large=args.seed_large,
        json_path=args.json_path,
        private_redis=args.private_redis,
        quick=args.quick,
        rounds=args.rounds,
        light_flows=args.light_flows or max(args.bundles // 2, 5),
        profile_dir=args.profile_dir,
    )


def each_concurrency(argv: list[str], opts: Options) -> int:
    """One process per pool size: the settings (and so the Redis the tasks talk to) are read
    once per process, and each run starts its own Redis and worker. Their figures are merged."""
    merged: dict[str, Any] = {"command": " ".join(sys.argv), "runs": {}}
    worst = 0
    with tempfile.TemporaryDirectory(prefix="vip-bundles-bench-") as tmp:
        for concurrency in opts.concurrency:
            out = Path(tmp) / f"c{concurrency}.json"
            args = [*argv, "--concurrency", str(concurrency), "--json", str(out)]
            worst = max(worst, subprocess.call([sys.executable, "-m", "bench", *args]))
            if out.exists():
                figures = json.loads(out.read_text())
                merged.update({k: v for k, v in figures.items() if k not in ("runs", "command")})
                merged["runs"].update(figures.get("runs", {}))
    if opts.json_path:
        Path(opts.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json_path).write_text(json.dumps(merged, indent=2, default=str))
    return worst


if __name__ == "__main__":
    options = parse()
    if len(options.concurrency) > 1:
        sys.exit(each_concurrency(sys.argv[1:], options))
    sys.exit(main(options))

"""`python -m bench.ab`: one ratio, many short interleaved rounds, to judge one change.

The full benchmark takes a quarter of an hour and its ratios move by +-0.05 between runs on a
shared 2-core machine. To tell whether a change bought anything, run this on the code before
and after it (a `git worktree` of the older commit, run with its own path first on sys.path:
`python /path/to/old/checkout/bench/ab.py ...` measures that checkout) and compare medians:

    .venv/bin/python -m bench.ab throughput --rounds 10 --flows 400 --private-redis
    .venv/bin/python -m bench.ab rollback --rounds 4 --flows 250 --concurrency 4 --private-redis

`throughput`: saga success over the bare chain, under load (window 2 x concurrency).
`rollback`: the rollback's p99 over the chain's p99, one flow at a time.
`floor`: the chain, the floor (bench/floor_tasks.py: the saga's design, none of its code) and
the saga, under load: floor / chain is the best this design can do here, saga / floor what the
saga's own code costs on top.
The stack is the benchmark's own (a database of its own, the simulator, one prefork worker).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this file is in

from bench.stack import running


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("what", choices=["throughput", "rollback", "floor"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--flows", type=int, default=300, help="flows per section and round")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--private-redis", action="store_true", help="an own redis-server")
    args = p.parse_args(argv)
    with running("prefork", args.concurrency, args.private_redis) as stack:
        # Imported here: `tasks` reads its settings once, and the stack has just set them.
        from bench.meter import Meter
        from bench.sections import RETURN_ID, Bench, Load, request
        from bench.seed import seed
        from tasks.celery_app import store

        r = stack.client()
        bench = Bench(Meter(stack, r), r)
        seed(r, store(), 1000, request(RETURN_ID))
        sold_out = bench.sold_out(stack.sim_url)
        ratios, floors = [], []
        for i in range(args.rounds):
            if args.what in ("throughput", "floor"):
                load = Load(args.flows, 2 * args.concurrency)
                base = bench.baseline(load)
                shown = f"chain {base.throughput:.1f}/s, "
                if args.what == "floor":
                    floor = bench.floor(load)
                    floors.append(floor.throughput / base.throughput)
                    shown += f"floor {floor.throughput:.1f}/s ({floors[-1]:.3f}), "
                saga = bench.saga("success", load, RETURN_ID, rollback=False)
                ratios.append(saga.throughput / base.throughput)
                shown += f"saga {saga.throughput:.1f}/s"
            else:
                load = Load(args.flows, 1)
                base = bench.baseline(load)
                saga = bench.saga("rollback-light", load, sold_out, rollback=True)
                ratios.append(saga.p(99) / base.p(99))
                shown = f"chain p99 {base.p(99):.1f} ms, rollback p99 {saga.p(99):.1f} ms"
            print(f"round {i + 1}: {shown}, saga / chain {ratios[-1]:.3f}", flush=True)
    if floors:
        _summary("floor / chain", args.concurrency, floors)
    _summary("saga / chain" if floors else args.what, args.concurrency, ratios)
    return 0


def _summary(what: str, concurrency: int, ratios: list[float]) -> None:
    print(
        f"{what} at concurrency {concurrency}: median ratio {statistics.median(ratios):.3f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})"
    )


if __name__ == "__main__":
    sys.exit(main())

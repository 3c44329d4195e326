"""`python -m bench.ab`: one ratio, many short interleaved rounds, to judge one change.

The full benchmark takes a quarter of an hour and its ratios move by +-0.05 between runs on a
shared 2-core machine. To tell whether a change bought anything, run this on the code before
and after it (a `git worktree` of the older commit, run with its own path first on sys.path:
`python /path/to/old/checkout/bench/ab.py ...` measures that checkout) and compare medians:

    .venv/bin/python -m bench.ab throughput --rounds 10 --flows 400 --private-redis
    .venv/bin/python -m bench.ab rollback --rounds 4 --flows 250 --concurrency 4 --private-redis

`throughput`: saga success over the bare chain, under load (window 2 x concurrency).
`rollback`: the rollback's p99 (409 -> failed) over the chain's p99 (send -> done), one flow
at a time, chain and rollback alternating flow by flow (bench/rollback_trace.py: by stage).
`--tls`: Redis over TLS (a private TLS-only server, a CA made for the run): the same
figures against a `--private-redis` run say what TLS costs.
`floor`: the chain, the floor (bench/floor_tasks.py: the saga's design, none of its code) and
the saga, under load: floor / chain is the best this design can do here, saga / floor what the
saga's own code costs on top.
`cpu`: CPU per flow of the chain and the saga under load (the workers alone, and the whole
run: workers, Redis, simulator, driver): at saturation, the figure that sets capacity.
`peer`: the chain, celery-saga 0.1.1 (bench/peer_tasks.py: the same bundle, its README's way)
and the saga, under load: throughputs, their ratios, and each side's p50/p99 (send -> done).
`gate`: CPU per partner call without and with the fleet's partner gate (and a quota), on a
private Redis (bench/gate_cost.py): `--rounds 10 --flows 2000`.

The stack is the benchmark's own (a database of its own, the simulator, the workers): by
default one prefork worker, partners answering at once; `--pool threads --processes 2
--concurrency 64 --latency-ms 200` measures at the partners' speed on an I/O pool. Every mode
prints each side's CPU per flow too.
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
    p.add_argument("what", choices=["throughput", "rollback", "floor", "cpu", "gate", "peer"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--flows", type=int, default=300, help="flows per section and round")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--private-redis", action="store_true", help="an own redis-server")
    p.add_argument(
        "--tls", action="store_true", help="an own redis-server, TLS only (rediss://, a test CA)"
    )
    p.add_argument("--pool", default="prefork", help="the workers' pool (prefork, threads)")
    p.add_argument("--processes", type=int, default=1, help="worker processes")
    p.add_argument("--latency-ms", type=int, default=0, help="partner latency")
    p.add_argument("--jitter-ms", type=int, default=0, help="partner latency jitter (+-)")
    p.add_argument("--window", type=int, default=0, help="flows in flight; default 2 x slots")
    args = p.parse_args(argv)
    if args.what == "gate":
        from bench.gate_cost import main as gate_cost

        return gate_cost(args.rounds, args.flows)
    window = args.window or 2 * args.concurrency * args.processes
    with running(
        args.pool,
        args.concurrency,
        args.private_redis,
        processes=args.processes,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        tls=args.tls,
    ) as stack:
        # Imported here: `tasks` reads its settings once, and the stack has just set them.
        from bench.flows import BaselineFlow, SagaFlow, drive
        from bench.meter import Meter
        from bench.report import cpu_ms, worker_cpu_ms
        from bench.rollback_trace import interleaved, rollback_ms
        from bench.sections import RETURN_ID, Bench, Load, percentile, request
        from bench.seed import seed
        from tasks.celery_app import store

        r = stack.client()
        bench = Bench(Meter(stack, r), r)
        seed(r, store(), 1000, request(RETURN_ID))
        sold_out = bench.sold_out(stack.sim_url)
        chains = BaselineFlow(r, request(RETURN_ID))
        rollbacks = SagaFlow(r, store().stream, request(sold_out))
        ratios, floors, cpu = [], [], []
        peers: list[float] = []  # saga / celery-saga (`peer`)
        lat: list[tuple[float, ...]] = []  # p50, p99 of chain, celery-saga, saga (`peer`)
        for i in range(args.rounds):
            if args.what in ("throughput", "floor", "cpu", "peer"):
                load = Load(args.flows, window)
                base = bench.baseline(load)
                shown = f"chain {base.throughput:.1f}/s, "
                if args.what == "peer":
                    peer = bench.peer(load)
                    floors.append(peer.throughput / base.throughput)
                    shown += f"celery-saga {peer.throughput:.1f}/s ({floors[-1]:.3f}), "
                    shown += f"p50/p99 ms chain {base.p(50):.0f}/{base.p(99):.0f}, "
                    shown += f"celery-saga {peer.p(50):.0f}/{peer.p(99):.0f}, "
                if args.what == "floor":
                    floor = bench.floor(load)
                    floors.append(floor.throughput / base.throughput)
                    shown += f"floor {floor.throughput:.1f}/s ({floors[-1]:.3f}), "
                saga = bench.saga("success", load, RETURN_ID, rollback=False)
                ratios.append(saga.throughput / base.throughput)
                shown += f"saga {saga.throughput:.1f}/s"
                if args.what == "peer":
                    peers.append(saga.throughput / peer.throughput)
                    shown += f" p50/p99 {saga.p(50):.0f}/{saga.p(99):.0f} ms"
                    lat.append(
                        (base.p(50), base.p(99), peer.p(50), peer.p(99), saga.p(50), saga.p(99))
                    )
                if args.what == "cpu":
                    ratios[-1] = cpu_ms(saga) / cpu_ms(base)
            else:
                # Flow by flow, chain then rollback: a burst of the shared machine's load lands
                # on both sides alike. (Blocks of 250 flows a side, seconds each, let one burst
                # land on one side only: p99 ratios of 0.9 to 7 in one day, no tail of the
                # rollback's own; bench/rollback_trace.py --blocks shows it.)
                if i == 0:
                    drive(chains, 20, 1)  # warm-up
                    drive(rollbacks, 20, 1)
                chain_ms, bundle_ids = interleaved(chains, rollbacks, args.flows)
                chain_p99 = percentile(chain_ms, 99)
                rollback_p99 = percentile(rollback_ms(store(), bundle_ids), 99)
                ratios.append(rollback_p99 / chain_p99)
                print(
                    f"round {i + 1}: chain p99 {chain_p99:.1f} ms, rollback p99 "
                    f"{rollback_p99:.1f} ms, rollback / chain {ratios[-1]:.3f}",
                    flush=True,
                )
                continue
            cpu.append((cpu_ms(base), worker_cpu_ms(base), cpu_ms(saga), worker_cpu_ms(saga)))
            shown += f"; cpu ms/flow chain {cpu[-1][0]:.2f} (workers {cpu[-1][1]:.2f})"
            shown += f", saga {cpu[-1][2]:.2f} (workers {cpu[-1][3]:.2f})"
            print(f"round {i + 1}: {shown}, saga / chain {ratios[-1]:.3f}", flush=True)
    shape = f"{args.processes} x {args.pool} -c {args.concurrency}, partners {args.latency_ms} ms"
    shape += ", Redis over TLS" if args.tls else ""
    print(f"{shape}, window {window}, {args.rounds} rounds of {args.flows} flows")
    if floors and args.what == "peer":
        _summary("celery-saga / chain", args.concurrency, floors)
        _summary("saga / celery-saga", args.concurrency, peers)
        for k, name in enumerate(("chain", "celery-saga", "saga")):
            p50, p99 = (statistics.median(x[2 * k + j] for x in lat) for j in (0, 1))
            print(f"{name}: median p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    elif floors:
        _summary("floor / chain", args.concurrency, floors)
    _summary("saga / chain" if floors else args.what, args.concurrency, ratios)
    for k, name in enumerate(("chain, run", "chain, workers", "saga, run", "saga, workers")):
        if not cpu:  # rollback: the sides run interleaved, their CPU is not told apart
            break
        values = [c[k] for c in cpu]
        print(f"cpu ms per flow, {name}: median {statistics.median(values):.2f}")
    return 0


def _summary(what: str, concurrency: int, ratios: list[float]) -> None:
    print(
        f"{what} at concurrency {concurrency}: median ratio {statistics.median(ratios):.3f} "
        f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})"
    )


if __name__ == "__main__":
    sys.exit(main())

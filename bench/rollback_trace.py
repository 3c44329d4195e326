"""`python -m bench.rollback_trace`: where a rollback's time goes, stage by stage, per bundle.

It drives bare chains and rollbacks one flow at a time, alternating (chain, rollback, chain...),
so a burst of the shared machine's load lands on both sides alike, then lines up, for each
bundle, the times in its history (the workers' clocks) with the worker log's lines (ms): when
the main process received each task, when a pool process logged the undo as started.

    .venv/bin/python -m bench.rollback_trace --pairs 1000 --private-redis
    .venv/bin/python -m bench.rollback_trace --blocks 4 --flows 250 --private-redis

`--blocks`: as `bench.ab rollback` measured before issue 28: per round, a block of chains
then a block of rollbacks (seconds each), with the time of each block and of each slow one.

Stages (ms, each from the previous mark):
  pm_received    the 409 recorded (FlightBookingFailed_v1) -> handle_event received
  pm_done        -> handle_event logged `succeeded` (it sent the undos)
  undo_received  -> the last undo task received
  undo_started   -> the last undo's `<Command> <bundle>` line (its start counted)
  undo_recorded  -> the last undo recorded (its event in the history)
  failed         -> VipBundleFailed_v1
One flow is in flight at a time, so every log line between a bundle's 409 and its `failed`
belongs to it.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import running

if TYPE_CHECKING:
    from adapters.store import BundleStore
    from bench.flows import BaselineFlow, SagaFlow

LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/([\w-]+)\] (.*)$")
UNDO_EVENTS = ("TicketRefunded_v1", "FlightTicketsCancelled_v1")
STAGES = ("pm_received", "pm_done", "undo_received", "undo_started", "undo_recorded", "failed")
NAN = float("nan")


def interleaved(
    chains: BaselineFlow, rollbacks: SagaFlow, pairs: int
) -> tuple[list[float], list[str]]:
    """`pairs` x (one chain, then one rollback): the chains' latencies (send -> last task
    done, ms) and the rollbacks' bundle ids (their latency is read from their history)."""
    from bench.flows import drive

    chain_ms, bundle_ids = [], []
    for _ in range(pairs):
        for chain_id, at in drive(chains, 1, 1).items():
            chain_ms.append((chains.finished[chain_id] - at) * 1000)
        bundle_ids += list(drive(rollbacks, 1, 1))
    return chain_ms, bundle_ids


def rollback_ms(st: BundleStore, bundle_ids: list[str]) -> list[float]:
    """409 (FlightBookingFailed_v1) -> failed, ms, from each bundle's history."""
    out = []
    for bundle_id in bundle_ids:
        at = {h.event: h.at.timestamp() for h in st.require(bundle_id).history}
        out.append((at["VipBundleFailed_v1"] - at["FlightBookingFailed_v1"]) * 1000)
    return out


def log_lines(path: Path) -> list[tuple[float, str, str]]:
    """(epoch seconds, process name, message) of each timestamped line of a worker log."""
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        if m := LINE.match(raw):
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((at, m[2], m[3]))
    return out


def stages(history: list[tuple[float, str]], lines: list[tuple[float, str, str]]) -> list[float]:
    """The stage durations (ms) of one rollback; NaN where a mark is missing."""
    at = {event: t for t, event in history}
    t409, t_failed = at["FlightBookingFailed_v1"], at["VipBundleFailed_v1"]
    mine = [(t, m) for t, _, m in lines if t409 - 0.002 <= t <= t_failed + 0.002]

    def last(pattern: str) -> float:
        return max((t for t, m in mine if re.search(pattern, m)), default=NAN)

    marks = [
        t409,
        last(r"handle_event\[.*\] received"),
        last(r"handle_event\[.*\] succeeded"),
        last(r"compensation\.\w+\[.*\] received"),
        last(r"\]: (RefundTicket|CancelFlightTickets|ResolveBooking) "),
        max(at.get(e, NAN) for e in UNDO_EVENTS),
        t_failed,
    ]
    return [(b - a) * 1000 for a, b in itertools.pairwise(marks)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rollback_trace", description=__doc__)
    p.add_argument("--pairs", type=int, default=1000, help="chain-then-rollback pairs")
    p.add_argument("--blocks", type=int, default=0, help="instead: rounds of blocks of --flows")
    p.add_argument("--flows", type=int, default=250, help="flows per block (--blocks)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--pool", default="prefork")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--latency-ms", type=int, default=0)
    p.add_argument("--private-redis", action="store_true")
    p.add_argument("--keep-log", type=Path, help="copy the worker's log here")
    p.add_argument("--show", type=int, default=10, help="slowest rollbacks shown stage by stage")
    args = p.parse_args(argv)
    with running(
        args.pool,
        args.concurrency,
        args.private_redis,
        processes=args.processes,
        latency_ms=args.latency_ms,
    ) as stack:
        from bench.flows import BaselineFlow, SagaFlow, drive
        from bench.sections import RETURN_ID, Bench, request
        from bench.seed import seed
        from tasks.celery_app import store

        r, st = stack.client(), store()
        seed(r, st, 1000, request(RETURN_ID))
        sold_out = Bench(None, r).sold_out(stack.sim_url)  # type: ignore[arg-type]
        chains = BaselineFlow(r, request(RETURN_ID))
        rollbacks = SagaFlow(r, st.stream, request(sold_out))
        drive(chains, 20, 1)  # warm-up
        drive(rollbacks, 20, 1)
        if args.blocks:
            chain_ms, bundle_ids = _blocks(chains, rollbacks, st, args.blocks, args.flows)
        else:
            chain_ms, bundle_ids = interleaved(chains, rollbacks, args.pairs)
        lines = log_lines(stack.worker_log)
        if args.keep_log:
            shutil.copyfile(stack.worker_log, args.keep_log)
        rows = []
        for bundle_id in bundle_ids:
            history = [(h.at.timestamp(), h.event) for h in st.require(bundle_id).history]
            rows.append((bundle_id, history[0][0], stages(history, lines)))
    how = f"{args.processes} x {args.pool} -c {args.concurrency}, partners {args.latency_ms} ms"
    print(f"{len(rows)} rollbacks, {how}")
    chain_ms.sort()
    totals = sorted(_total(s) for *_, s in rows)
    print(f"chain send -> done: p50 {_q(chain_ms, 50):.1f} ms, p99 {_q(chain_ms, 99):.1f} ms")
    print(f"rollback 409 -> failed: p50 {_q(totals, 50):.1f} ms, p99 {_q(totals, 99):.1f} ms")
    print(f"rollback p99 / chain p99: {_q(totals, 99) / _q(chain_ms, 99):.2f}")
    print("stage           p50     p90     p99     max  (ms)")
    for k, name in enumerate(STAGES):
        values = sorted(s[k] for *_, s in rows if s[k] == s[k])
        qs = [_q(values, q) for q in (50, 90, 99)] + [values[-1] if values else NAN]
        print(f"{name:<13}" + "".join(f"{v:8.1f}" for v in qs))
    print(f"the {args.show} slowest (started at, epoch s mod 1000), stage by stage:")
    for bundle_id, started, s in sorted(rows, key=lambda row: -_total(row[2]))[: args.show]:
        shown = " ".join(f"{v:6.1f}" for v in s)
        print(f"  {bundle_id[:8]} at {started % 1000:8.3f} total {_total(s):6.1f}: {shown}")
    return 0


def _blocks(
    chains: BaselineFlow, rollbacks: SagaFlow, st: BundleStore, rounds: int, flows: int
) -> tuple[list[float], list[str]]:
    from bench.flows import drive

    chain_ms, bundle_ids = [], []
    for i in range(rounds):
        t0 = time.time()
        sent = drive(chains, flows, 1)
        t1 = time.time()
        block = [(chains.finished[c] - at) * 1000 for c, at in sent.items()]
        ids = list(drive(rollbacks, flows, 1))
        t2 = time.time()
        chain_ms += block
        bundle_ids += ids
        mine = sorted(rollback_ms(st, ids))
        print(
            f"round {i + 1}: chains {t0 % 1000:.1f}-{t1 % 1000:.1f} p99 "
            f"{_q(sorted(block), 99):.1f} ms, rollbacks {t1 % 1000:.1f}-{t2 % 1000:.1f} "
            f"p99 {_q(mine, 99):.1f} ms",
            flush=True,
        )
    return chain_ms, bundle_ids


def _total(s: list[float]) -> float:
    """409 -> failed (the stages between may have a mark missing)."""
    return sum(v for v in s if v == v) if s[-1] == s[-1] else NAN


def _q(ordered: list[float], q: float) -> float:
    """Nearest rank, as bench.sections.percentile."""
    return ordered[max(0, -(-len(ordered) * int(q) // 100) - 1)] if ordered else NAN


if __name__ == "__main__":
    sys.exit(main())

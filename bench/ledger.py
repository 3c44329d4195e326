"""`python -m bench.ledger saga|peer`: how many bundles end wrong after faults and a kill -9.

One side per run, on a stack of its own (a fresh simulator, so the partners' books hold that
side's effects only): `--bundles` bundles sent at once, every `--refused-every`-th on a sold-out
return flight (it rolls back), 20% of every partner call answered 503 (`--fault-rate`) for
`--fault-s` seconds, the worker killed with SIGKILL (main process and pool) `--kill-after`
seconds in and a new one started; then the run settles (`--settle` s at most) and the
partners' books are read against each bundle's end:
- saga: the reliability suite's invariants (tests/reliability/invariants.py); the reconciler,
  which celery beat runs in production, is sent every 5 s as beat would;
- peer (celery-saga 0.1.1, bench/peer_tasks.py): a bundle is wrong when it never ended
  (PENDING, RUNNING, COMPENSATING), when it COMPLETED without both flights and its show tickets
  intact, when it did not complete yet something is left booked (a flight ticket not cancelled,
  a show ticket not refunded), or when a ticket was refunded twice.

    .venv/bin/python -m bench.ledger saga --private-redis
    .venv/bin/python -m bench.ledger peer --private-redis
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import BASELINE_MODULE, running

PREFIXES = ("dead-nation-api", "transportation-api", "payments-api", "receipts-api")
# Messages of the killed worker come back after this long (unacked), not after an hour; the
# reconciler takes up a bundle with no transition for STALE_AFTER_S.
QUICK = {"VISIBILITY_TIMEOUT_S": "30", "STALE_AFTER_S": "10"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__)
    p.add_argument("side", choices=["saga", "peer"])
    p.add_argument("--bundles", type=int, default=64)
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--kill-after", type=float, default=1.0)
    p.add_argument(
        "--refused-every", type=int, default=4, help="every Nth bundle's return flight is sold out"
    )
    p.add_argument("--fault-s", type=float, default=15.0, help="faults last this long")
    p.add_argument("--settle", type=float, default=120.0)
    p.add_argument("--latency-ms", type=int, default=20)
    p.add_argument("--private-redis", action="store_true")
    p.add_argument(
        "--peer-defaults",
        action="store_true",
        help="the peer's tasks acked on receipt, Celery's default (else this app's acks_late)",
    )
    args = p.parse_args(argv)
    os.environ.update(QUICK)
    if args.peer_defaults:
        os.environ["BENCH_PEER_CELERY_DEFAULTS"] = "1"  # read by the workers (bench/peer_tasks.py)
    with running("prefork", 2, args.private_redis, latency_ms=args.latency_ms) as stack:
        from bench.sections import SOLD_OUT_ID
        from partner_simulator.server import SimulatorClient
        from vip_bundles import local_stack

        sim = SimulatorClient(stack.sim_url)
        for i, prefix in enumerate(PREFIXES):
            sim.fault(f"/{prefix}", status=503, rate=args.fault_rate, seed=i + 1)
        sim.set_flight_seats(SOLD_OUT_ID, 0)
        sent = _send(args.side, stack.client(), args.bundles, args.refused_every)
        started = time.monotonic()
        time.sleep(args.kill_after)
        before = Counter(_statuses(args.side, sent).values())
        os.killpg(stack.worker_pid, 9)  # the worker and its pool, as a crash
        print(f"{args.side}: killed the worker {args.kill_after:g} s in; bundles then: {before}")
        env = {"REDIS_URL": stack.redis_url, "GATEWAY_URL": stack.sim_url}
        worker = local_stack.start_worker(
            local_stack.celery_env(**env, CELERY_WORKER_INCLUDE=BASELINE_MODULE),
            name=f"bench-{uuid.uuid4().hex[:8]}@localhost",
            concurrency=2,
            logdir=stack.worker_log.parent,
        )
        try:
            time.sleep(max(0.0, started + args.fault_s - time.monotonic()))
            sim.clear_faults()  # the faults are over; what is left is the settling
            ended = _settle(args.side, sent, args.settle)
            print(f"{args.side}: {len(sent)} bundles, settled: {ended}")
            wrong, notes = (_saga_wrong if args.side == "saga" else _peer_wrong)(sent, sim)
        finally:
            worker.stop()
    print(f"{args.side}: {len(wrong)} of {len(sent)} bundles wrong")
    for note in notes[:20]:
        print(f"  {note}")
    return 0


def _send(side: str, r: Any, n: int, refused_every: int) -> list[str]:
    """`n` bundles; every `refused_every`-th on a sold-out return flight (it rolls back)."""
    from bench.sections import RETURN_ID, SOLD_OUT_ID, request

    def flow(return_id: str) -> Any:
        if side == "peer":
            from bench.flows import PeerFlow

            return PeerFlow(r, request(return_id))
        from bench.flows import SagaFlow
        from tasks.celery_app import store

        return SagaFlow(r, store().stream, request(return_id))

    booked, refused = flow(RETURN_ID), flow(SOLD_OUT_ID)
    return [
        (refused if refused_every and i % refused_every == 0 else booked).send()[0]
        for i in range(n)
    ]


def _settle(side: str, sent: list[str], settle_s: float) -> bool:
    """Wait until every bundle ended (or `settle_s` passed); the saga's reconciler meanwhile."""
    from tasks.celery_app import app

    deadline, next_reconcile = time.monotonic() + settle_s, 0.0
    while time.monotonic() < deadline:
        if side == "saga" and time.monotonic() >= next_reconcile:
            app.send_task("vip_bundle.reconcile", queue="vip-bundles.compensation")
            next_reconcile = time.monotonic() + 5
        if all(_ended(side, s) for s in _statuses(side, sent).values()):
            return True
        time.sleep(1)
    return False


def _statuses(side: str, sent: list[str]) -> dict[str, str]:
    if side == "saga":
        from tasks.celery_app import store

        return {b: str(x.status) if (x := store().get(b)) else "missing" for b in sent}
    from celery_saga.executor import get_backend

    by_flow = {e.input_data.get("flow_id"): e.status.value for e in get_backend().list_all()}
    return {f: str(by_flow.get(f, "missing")) for f in sent}


def _ended(side: str, status: str) -> bool:
    if side == "saga":
        return status in ("finalized", "failed", "cancelled", "compensation_failed")
    return status.upper() in ("COMPLETED", "COMPENSATED", "FAILED")


def _saga_wrong(sent: list[str], sim: Any) -> tuple[set[str], list[str]]:
    from tasks.celery_app import store
    from tests.reliability.invariants import check

    report = check(store(), sim, sent, allow_parked=True)
    print(f"saga invariants: {report.as_dict()}")
    wrong = {b for b in sent if any(b in v for v in report.violations)}
    wrong |= {b for b, s in _statuses("saga", sent).items() if not _ended("saga", s)}
    return wrong, report.violations


def _peer_wrong(sent: list[str], sim: Any) -> tuple[set[str], list[str]]:
    from bench.baseline_tasks import NAMESPACE
    from bench.peer_tasks import call

    statuses = _statuses("peer", sent)
    calls = sim.calls()
    flights = sim.flight_tickets()
    refunded = Counter(r["payment_reference"] for r in sim.refunds())
    booked = {
        c["body"]["booking_id"]
        for c in calls
        if c["method"] == "POST" and c["status"] < 300 and not c.get("fault")
    }
    wrong, notes = set(), []
    for flow_id in sent:
        status = statuses[flow_id].upper()
        booking_id = str(uuid.uuid5(NAMESPACE, flow_id))
        show: list[str] = []
        if booking_id in booked:  # learn its tickets: the seller answers a seen key as before
            body = {"booking_id": booking_id, "customer_address": "bench@example.com"}
            body |= {"event_id": _show_of(calls, booking_id), "number_of_tickets": 2}
            show = call("POST", "/dead-nation-api/ticket/booking", body, booking_id)["ticket_ids"]
        active = [t for t in flights if t["reference_id"] == flow_id and not t["cancelled"]]
        problems = []
        if not _ended("peer", status):
            problems.append(f"never ended ({status})")
        if status == "COMPLETED" and (
            len(active) != 4 or len(show) != 2 or any(refunded[t] for t in show)
        ):
            problems.append(
                f"completed with {len(active)} flight tickets, {len(show)} show tickets"
            )
        if status != "COMPLETED" and (active or any(refunded[t] == 0 for t in show)):
            unrefunded = sum(1 for t in show if refunded[t] == 0)
            problems.append(f"{len(active)} flight tickets, {unrefunded} show tickets left booked")
        if any(refunded[t] > 1 for t in show):
            problems.append("a ticket refunded twice")
        if problems:
            wrong.add(flow_id)
            notes.append(f"{flow_id} {status}: {'; '.join(problems)}")
    print(f"peer statuses: {dict(Counter(s.upper() for s in statuses.values()))}")
    return wrong, notes


def _show_of(calls: list[dict[str, Any]], booking_id: str) -> str:
    return next(
        c["body"]["event_id"]
        for c in calls
        if c["method"] == "POST" and c["body"].get("booking_id") == booking_id
    )


if __name__ == "__main__":
    sys.exit(main())

"""Retention measured: Redis memory per live and per archived bundle, flat hot memory over
simulated days, archive throughput, and what archiving costs the saga while it runs.

    .venv/bin/python -m bench.archive memory --bundles 10000
    .venv/bin/python -m bench.archive flat --days 20 --per-day 5000
    .venv/bin/python -m bench.archive cost --rounds 4 --flows 300 --backlog 20000

`memory` and `flat` seed finalized bundles directly (as bench/seed.py does: real documents
made by the saga's own functions, the store's key layout), each with a settle time on a
simulated clock, and archive them with the real archiver (adapters/archiver.py) into a
PostgreSQL database made for the run (`BENCH_ARCHIVE_SERVER`, default
postgresql://postgres@127.0.0.1:5432; dropped at the end), on a private redis-server.
`cost` runs the saga under load (bench.sections, as bench.ab) with and without an archiver
working off a seeded backlog at the same time, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.archive import BundleArchive
from adapters.archiver import archive_due
from adapters.store import BundleStore
from bench.seed import finalized_template
from process_manager.bundle import Status, booking_id_for
from process_manager.messages import example_request
from vip_bundles import local_stack

DAY = 86_400.0
RETENTION = 7 * DAY
SERVER = os.environ.get("BENCH_ARCHIVE_SERVER", "postgresql://postgres@127.0.0.1:5432")


@contextlib.contextmanager
def archive_db() -> Iterator[BundleArchive]:
    name = f"vip_bundles_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    archive = BundleArchive(f"{SERVER}/{name}")
    try:
        archive.init()
        yield archive
    finally:
        archive.close()
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def private_store() -> Iterator[BundleStore]:
    server = local_stack.start_redis_server()
    client = redis.Redis.from_url(f"{server.url}/0")
    try:
        yield BundleStore(client)
    finally:
        client.close()
        server.stop()


def seed_settled(st: BundleStore, n: int, settled_from: float, settled_to: float) -> None:
    """`n` finalized bundles, settled evenly over [settled_from, settled_to) (simulated)."""
    template = finalized_template(example_request())
    doc = template.model_dump_json()
    old = (template.vip_bundle_id, template.booking_id, template.customer_email)
    pipe = st.redis.pipeline(transaction=False)
    for i in range(n):
        new_id = str(uuid.uuid4())
        email, booking = f"seed-{new_id[:8]}@example.com", booking_id_for(new_id)
        body = doc.replace(old[0], new_id).replace(old[1], booking).replace(old[2], email)
        at = settled_from + (settled_to - settled_from) * i / n
        fields = {"version": template.version, "status": str(Status.FINALIZED), "doc": body}
        pipe.hset(st._bundle_key(new_id), mapping=fields)
        pipe.zadd(st.status_key(Status.FINALIZED), {new_id: at})
        pipe.hset(st._booking_index(), booking, new_id)
        pipe.zadd(st._email_index(email), {new_id: at})
        pipe.zadd(st._correlation_index(new_id), {new_id: at})
        if (i + 1) % 2000 == 0:
            pipe.execute()
    pipe.execute()


def used(st: BundleStore) -> int:
    return int(st.redis.info("memory")["used_memory"])


def memory(n: int) -> None:
    with private_store() as st, archive_db() as archive:
        empty = used(st)
        seed_settled(st, n, 0.0, DAY)
        live = used(st)
        started = time.perf_counter()
        done = archive_due(st, archive, DAY + RETENTION, RETENTION, 1000, 10**6)
        took = time.perf_counter() - started
        after = used(st)
        assert done.removed == n, done
        print(f"bundles: {n:,}")
        print(
            f"Redis per live finalized bundle (seeded: hash + indexes): {(live - empty) / n:,.0f} B"
        )
        print(f"Redis per archived bundle (tombstone): {(after - empty) / n:,.1f} B")
        print(f"archive throughput: {n / took:,.0f} bundles/s (batches of 1,000)")
        # Idempotency after archiving: a tombstone lookup in Redis vs asking the archive.
        probe = [str(uuid.uuid4()) for _ in range(2000)]
        t_redis = _timed(lambda i: st.tombstone(i), probe)
        t_pg = _timed(lambda i: archive.get(i), probe)
        print(
            f"unknown-id check, p50: tombstone HGET {t_redis:.3f} ms, archive SELECT {t_pg:.3f} ms"
        )


def _timed(call: object, ids: list[str]) -> float:
    samples = []
    for i in ids:
        t = time.perf_counter()
        call(i)  # type: ignore[operator]
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def flat(days: int, per_day: int) -> None:
    with private_store() as st, archive_db() as archive:
        empty = used(st)
        print(f"{'day':>4} {'stored':>10} {'in Redis':>9} {'archived':>9} {'used_memory':>12}")
        total = archived = 0
        for day in range(days):
            seed_settled(st, per_day, day * DAY, (day + 1) * DAY)
            total += per_day
            archived += archive_due(st, archive, (day + 1) * DAY, RETENTION, 1000, 10**6).removed
            live = st.count(Status.FINALIZED)
            print(
                f"{day + 1:>4} {total:>10,} {live:>9,} {archived:>9,} "
                f"{(used(st) - empty) / 2**20:>10.1f} MiB",
                flush=True,
            )


def cost(rounds: int, flows: int, concurrency: int, backlog: int) -> None:
    from bench.stack import running

    with running("prefork", concurrency, True) as stack, archive_db() as archive:
        from bench.meter import Meter
        from bench.sections import RETURN_ID, Bench, Load
        from tasks.celery_app import store

        r = stack.client()
        bench = Bench(Meter(stack, r), r)
        st = store()
        alone, busy, rates = [], [], []
        for i in range(rounds):
            load = Load(flows, 2 * concurrency)
            a = bench.saga("success", load, RETURN_ID, rollback=False).throughput
            seed_settled(st, backlog, 0.0, DAY)  # due for archiving (settled long ago)
            stop, moved = threading.Event(), [0, 0.0]
            thread = threading.Thread(target=_archiver, args=(st, archive, stop, moved))
            thread.start()
            b = bench.saga("success", load, RETURN_ID, rollback=False).throughput
            stop.set()
            thread.join()
            alone.append(a)
            busy.append(b)
            rates.append(moved[0] / moved[1] if moved[1] else 0.0)
            print(
                f"round {i + 1}: saga alone {a:.1f}/s, while archiving {b:.1f}/s "
                f"({b / a:.3f}); archived {moved[0]:,} at {rates[-1]:,.0f}/s",
                flush=True,
            )
        ratio = statistics.median(b / a for a, b in zip(alone, busy, strict=True))
        print(f"saga while archiving / alone at concurrency {concurrency}: median {ratio:.3f}")
        print(f"archive throughput meanwhile: median {statistics.median(rates):,.0f} bundles/s")


def _archiver(
    st: BundleStore, archive: BundleArchive, stop: threading.Event, moved: list[float]
) -> None:
    """Archive the due backlog batch by batch until it is gone or `stop`; count and time it."""
    started = time.perf_counter()
    while not stop.is_set():
        done = archive_due(st, archive, time.time(), RETENTION, 1000, 1)
        moved[0] += done.removed
        if not done.removed:
            break
    moved[1] = time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--bundles", type=int, default=10_000)
    f = sub.add_parser("flat")
    f.add_argument("--days", type=int, default=20)
    f.add_argument("--per-day", type=int, default=5_000)
    c = sub.add_parser("cost")
    c.add_argument("--rounds", type=int, default=4)
    c.add_argument("--flows", type=int, default=300)
    c.add_argument("--concurrency", type=int, default=2)
    c.add_argument("--backlog", type=int, default=20_000)
    args = p.parse_args(argv)
    if args.what == "memory":
        memory(args.bundles)
    elif args.what == "flat":
        flat(args.days, args.per_day)
    else:
        cost(args.rounds, args.flows, args.concurrency, args.backlog)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench.replica_wait`: what waiting for a replica costs a booking's answer.

The doors answer a booking or a cancel only once a replica has the write
(`BundleStore.confirm_replicated`, Redis WAIT). This measures, on a private master and its
replica (two `redis-server`s on free ports), the store's part of a booking: the creation's
transition script alone, then the transition plus the confirmation, with the replica attached
and without one (the master whose replica died: a ROLE round trip, no WAIT). Interleaved
rounds, medians of per-operation times; figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import redis

from adapters.store import BundleStore
from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import example_request, parse_request
from vip_bundles import local_stack


def _fresh() -> Bundle:
    return Bundle.from_request(parse_request(example_request()))


def _book(store: BundleStore, confirm: bool) -> Callable[[], None]:
    def run() -> None:
        fresh = _fresh()
        bundle, _ = store.create(fresh, saga.initialized(fresh))
        if confirm:
            store.confirm_replicated(bundle.vip_bundle_id, 1, timeout_s=2)

    return run


def _median_us(op: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        op()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def measure(n: int, rounds: int) -> dict[str, float]:
    master = local_stack.start_redis_server(appendonly=True)
    replica = local_stack.start_redis_server(appendonly=True)
    try:
        port = int(master.url.rsplit(":", 1)[1].split("/")[0])
        replica_client = redis.Redis.from_url(replica.url)
        store = BundleStore(redis.Redis.from_url(master.url))
        cases: dict[str, list[float]] = {"transition": [], "with_replica": [], "no_replica": []}
        for _ in range(rounds):
            replica_client.replicaof("127.0.0.1", port)
            local_stack._wait(
                lambda: replica_client.info("replication").get("master_link_status") == "up",
                30,
                "the replica",
            )
            cases["transition"].append(_median_us(_book(store, confirm=False), n))
            cases["with_replica"].append(_median_us(_book(store, confirm=True), n))
            replica_client.replicaof("no", "one")
            local_stack._wait(
                lambda: store.redis.info("replication")["connected_slaves"] == 0, 30, "detached"
            )
            cases["no_replica"].append(_median_us(_book(store, confirm=True), n))
        return {name: round(statistics.median(values), 1) for name, values in cases.items()}
    finally:
        replica.stop()
        master.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.replica_wait", description=__doc__)
    p.add_argument("--n", type=int, default=2000, help="bookings per case and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = p.parse_args()
    figures = measure(args.n, args.rounds)
    base = figures["transition"]
    for name, us in figures.items():
        print(f"{name:>14}: {us:8.1f} us per booking  (+{us - base:.1f} us)")


if __name__ == "__main__":
    main()

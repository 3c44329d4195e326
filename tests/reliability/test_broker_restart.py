"""Scenario 5: the Redis server (broker, results and state at once) restarts mid-run.

A test-owned `redis-server` (its own port and directory, `--appendonly yes`) serves one
worker, beat and the bundles. While bundles are in flight it is stopped (SIGTERM: it writes
its append-only file and exits), stays down a few seconds, and starts again on the same port
and directory. Steps that were running when it went away could not record their outcome nor
send the next message: redelivery (`VISIBILITY_TIMEOUT_S`) and the reconciler
(`STALE_AFTER_S`) bring every bundle to its end. A client that got no answer submits again
with the same id, as the intake contract allows. No bundle and no event may be lost.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_manager.bundle import FINAL, Status
from tests.reliability.stack import Stack, log_count, received, received_again, reconciled
from vip_bundles import local_stack

pytestmark = pytest.mark.slow

BUNDLES = 45
DOWN_S = 3
HEALING = {"VISIBILITY_TIMEOUT_S": "20", "STALE_AFTER_S": "10"}


class OwnRedis:
    """A redis-server we can stop and start again on the same port and directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = local_stack.free_port()
        self.server = self._start()

    def _start(self) -> local_stack.LocalRedis:
        return local_stack.start_redis_server(
            port=self.port, appendonly=True, workdir=str(self.workdir)
        )

    @property
    def url(self) -> str:
        return self.server.url

    def restart(self, down_s: float, crash: bool) -> None:
        if crash and self.server.process is not None:
            self.server.process.kill()  # no goodbye: whatever was not yet fsynced is gone
            self.server.process.wait()
        self.server.stop()
        time.sleep(down_s)
        self.server = self._start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    yield server
    server.stop()


def resubmit_unknown(st: Stack) -> int:
    """What a client does when its request got no answer: send it again, same id."""
    st.wait(until=frozenset(Status), timeout=20)  # the intake queue drains first
    missing = [i for i, s in st.statuses(st.submitted).items() if s is None]
    for bundle_id in missing:
        st.send_book(st.bodies[bundle_id])
    return len(missing)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_broker_restart_loses_no_bundle_and_no_event(own_redis, make_stack, record, stop):
    st = make_stack(f"restart-{stop}", url=own_redis.url, **HEALING)
    worker = st.start_worker("worker", concurrency=4)
    st.start_beat(RECONCILE_EVERY_S="2")
    st.sim.set_latency(100)  # about a second per bundle: many are in flight at the restart
    for i in range(BUNDLES):
        if i % 3 == 0:
            flight_id = str(uuid.uuid4())
            st.limit_flight(flight_id, 0)
            st.book(return_flight_id=flight_id)
        else:
            st.book()
    time.sleep(2)
    before = Counter(str(s or "not yet stored") for s in st.statuses(st.submitted).values())

    own_redis.restart(DOWN_S, crash=stop == "sigkill")
    resubmitted = resubmit_unknown(st)
    statuses = st.wait(timeout=180)
    st.sim.set_latency(0)
    report = st.check()
    seen_before_restart = set(received(worker))
    record(
        f"5-restart-{stop}",
        f"Broker restart ({stop})",
        report,
        faults=[
            f"{BUNDLES} bundles (a third with the return flight sold out), partner latency "
            "100 ms so that many are in flight",
            f"redis-server (broker, results, state; appendonly yes, fsync every second) "
            f"{'killed (SIGKILL)' if stop == 'sigkill' else 'stopped (SIGTERM)'} after 2 s, "
            f"down {DOWN_S} s, started again on the same port and directory",
            "VISIBILITY_TIMEOUT_S=20, STALE_AFTER_S=10, beat every 2 s",
        ],
        bundles=len(st.submitted),
        status_at_restart=dict(before),
        resubmitted_by_client=resubmitted,
        tasks_received=len(seen_before_restart),
        messages_given_back=received_again(worker),
        worker_reconnected=log_count(worker, "Connected to redis://"),
        reconciler=dict(reconciled(worker)),
        tasks_failed_on_redis=log_count(worker, "network:ConnectionError"),
    )

    assert before.get("finalized", 0) < BUNDLES, "the restart came after every bundle finished"
    assert all(s in FINAL for s in statuses.values()), str(report)
    assert report.violations == [], str(report)

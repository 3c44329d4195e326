"""A worker that meets what a newer release wrote (a task message or a bundle document of a
newer schema version) leaves the bundle untouched, says so once, and defers the message for a
newer worker: the message stays on the broker, nothing is counted or written.

A worker of its own on a database of its own: the deferred message comes back every few seconds
for as long as no newer worker takes it, and must not wander into other tests' workers.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery
from redis import Redis

from adapters.metrics import metrics_key
from adapters.store import BundleStore
from partner_simulator.server import SimulatorServer
from process_manager import saga, versions
from process_manager.bundle import Bundle, Status
from tasks.celery_app import store as run_store
from tasks.schema_guard import bundle_id_of, defer_s
from tests.e2e.api_server import api_server
from tests.e2e.test_cli import vip_bundles
from tests.factories import fresh_bundle
from vip_bundles import local_stack

NEWER = versions.MESSAGE + 1


class Fleet:
    def __init__(self, url: str, worker: local_stack.Worker, app: Celery) -> None:
        self.redis = Redis.from_url(url)
        self.store = BundleStore(self.redis)
        self.worker = worker
        self.app = app

    def bundle(self) -> Bundle:
        fresh = fresh_bundle()
        return self.store.create(fresh, saga.initialized(fresh))[0]

    def hash_of(self, bundle: Bundle) -> dict[bytes, bytes]:
        return self.redis.hgetall(self.store._bundle_key(bundle.vip_bundle_id))

    def log(self) -> str:
        return self.worker.logfile.read_text() if self.worker.logfile.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            assert time.monotonic() < deadline, f"no {needle!r} in {self.worker.logfile}"
            time.sleep(0.1)

    def on_broker(self, task_id: str) -> list[dict]:
        """The messages with this task id still at the broker: queued, or held unacked by a
        worker (a deferred message waits for its ETA there)."""
        raw = [
            m for q in ("vip-bundles.booking", "vip-bundles") for m in self.redis.lrange(q, 0, -1)
        ]
        raw += [json.loads(v)[0] for v in self.redis.hvals("unacked")]
        found = [m if isinstance(m, dict) else json.loads(m) for m in raw]
        return [m for m in found if m["headers"]["id"] == task_id]

    def noted(self, what: str, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout  # workers send their metrics every 5 s
        while time.monotonic() < deadline:
            if n := self.redis.hget(metrics_key(self.store.prefix), f"newer_schema|{what}"):
                return int(n)
            time.sleep(0.2)
        return 0


@pytest.fixture(scope="module")
def fleet(claim_db: Callable[[], str], simulator: SimulatorServer, logdir: Path) -> Iterator[Fleet]:
    url = claim_db()
    app = Celery("newer-schema-test")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=url, result_backend=url)
    env = local_stack.celery_env(REDIS_URL=url, GATEWAY_URL=simulator.url)
    worker = local_stack.start_worker(
        env, name=f"newer-{uuid.uuid4().hex[:6]}@localhost", logdir=logdir, control_app=app
    )
    yield Fleet(url, worker, app)
    worker.stop()
    app.close()


@pytest.fixture(scope="module")
def claim_db() -> Iterator[Callable[[], str]]:
    """tests/conftest.py's `claim_db`, for the whole module (its fleet is module-scoped)."""
    from tests.conftest import database_claims

    with database_claims() as claim:
        yield claim


def test_a_newer_task_message_is_deferred_and_the_bundle_left_untouched(fleet: Fleet):
    bundle = fleet.bundle()
    before = fleet.hash_of(bundle)
    sent = fleet.app.send_task(
        "vip_bundle.book_show_tickets",
        args=[bundle.vip_bundle_id],
        queue="vip-bundles.booking",
        headers={versions.MESSAGE_HEADER: NEWER},
    )

    fleet.wait_for_log(f"task message of schema version {NEWER}")
    assert fleet.hash_of(bundle) == before  # nothing started, counted or written
    (kept,) = fleet.on_broker(sent.id)  # deferred, not dropped: the same id, still newer
    assert kept["headers"][versions.MESSAGE_HEADER] == NEWER
    assert kept["headers"]["retries"] == 0  # a deferral is not a retry: it never runs out
    assert fleet.log().count(f"for bundle {bundle.vip_bundle_id}: left to a newer") == 1
    assert fleet.noted("task message") >= 1


def test_a_newer_bundle_document_is_left_untouched_and_its_step_deferred(fleet: Fleet):
    bundle = fleet.bundle()
    key = fleet.store._bundle_key(bundle.vip_bundle_id)
    doc = {**json.loads(bundle.model_dump_json()), "schema_version": versions.DOCUMENT + 1}
    fleet.redis.hset(key, mapping={"doc": json.dumps(doc), "schema": versions.DOCUMENT + 1})
    before = fleet.hash_of(bundle)

    sent = fleet.app.send_task(
        "vip_bundle.book_show_tickets", args=[bundle.vip_bundle_id], queue="vip-bundles.booking"
    )

    fleet.wait_for_log(f"bundle document of schema version {versions.DOCUMENT + 1}")
    assert fleet.hash_of(bundle) == before  # not even a start counted
    assert len(fleet.on_broker(sent.id)) == 1
    assert fleet.noted("bundle document") >= 1


def test_the_http_door_leaves_a_newer_bundle_to_a_newer_door():
    fresh = fresh_bundle()
    bundle = run_store().create(fresh, saga.initialized(fresh))[0]
    doc = {**json.loads(bundle.model_dump_json()), "schema_version": versions.DOCUMENT + 1}
    run_store().redis.hset(run_store()._bundle_key(bundle.vip_bundle_id), "doc", json.dumps(doc))

    try:
        with api_server() as url:
            answer = httpx.get(f"{url}/vip-bundles/{bundle.vip_bundle_id}")
        shown = vip_bundles("status", bundle.vip_bundle_id)
    finally:
        forget(run_store(), bundle)  # the run's other tests meet no newer bundle
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert answer.json()["errors"][0]["field"] == "schema_version"
    # The CLI says so in one line, no traceback.
    assert shown.returncode == 1
    (line,) = shown.stderr.strip().splitlines()
    assert f"schema version {versions.DOCUMENT + 1}" in line and "newer release" in line


def forget(store: BundleStore, bundle: Bundle) -> None:
    """Remove a bundle just created, with its index entries, from the run's database."""
    pipe = store.redis.pipeline()
    pipe.delete(store._bundle_key(bundle.vip_bundle_id))
    for key in (store.status_key(bundle.status), store.in_flight_key):
        pipe.zrem(key, bundle.vip_bundle_id)
    pipe.zrem(store._email_index(bundle.customer_email), bundle.vip_bundle_id)
    pipe.zrem(store._correlation_index(bundle.correlation_id), bundle.vip_bundle_id)
    pipe.hdel(store._booking_index(), bundle.booking_id)
    pipe.execute()


EVENT_MESSAGE = {"header": {"event_name": "TicketRefunded_v1"}, "payload": {"vip_bundle_id": "b"}}


def test_the_bundle_of_a_task_message_is_found_in_each_shape_of_arguments():
    assert bundle_id_of(("b1", "inbound"), {}) == "b1"
    assert bundle_id_of((), {"vip_bundle_id": "b2", "reason": "r"}) == "b2"
    assert bundle_id_of((EVENT_MESSAGE,), {}) == "b"
    assert bundle_id_of((), {}) is None


@pytest.mark.parametrize("visibility_timeout_s", [3600, 60, 8])
def test_a_deferral_waits_well_inside_the_visibility_timeout(visibility_timeout_s: int):
    waits = [defer_s(visibility_timeout_s) for _ in range(50)]
    assert all(0 < w <= min(30, visibility_timeout_s / 4) for w in waits)


def test_the_reconciler_skips_a_newer_bundle_and_takes_the_others_up(fleet: Fleet):
    newer, stale = fleet.bundle(), fleet.bundle()
    key = fleet.store._bundle_key(newer.vip_bundle_id)
    doc = {**json.loads(newer.model_dump_json()), "schema_version": versions.DOCUMENT + 1}
    fleet.redis.hset(key, mapping={"doc": json.dumps(doc), "schema": versions.DOCUMENT + 1})
    before = fleet.hash_of(newer)

    # One pass, as beat's task runs it, told that nothing is recent enough to wait.
    env = {**fleet.worker.env, "STALE_AFTER_S": "0", "PARKED_RETRY_BASE_S": "0"}
    code = "from tasks.reconcile import reconcile; print(reconcile())"
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )

    assert run.returncode == 0, run.stderr
    assert ast.literal_eval(run.stdout.strip().splitlines()[-1])["resumed"] >= 1
    assert fleet.hash_of(newer) == before  # left to the newer release's reconciler
    deadline = time.monotonic() + 30  # the other one's chain was sent again: it finishes
    while fleet.store.require(stale.vip_bundle_id).status is not Status.FINALIZED:
        assert time.monotonic() < deadline, fleet.store.require(stale.vip_bundle_id).status
        time.sleep(0.1)

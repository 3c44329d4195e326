"""Every kind of process follows a Sentinel promotion by itself, without a restart.

A private Redis master, its replica and three sentinels (tests/reliability/sentinel_stack.py)
serve a worker, beat, the HTTP door and the CLI, started with REDIS_SENTINELS and
REDIS_SENTINEL_MASTER only (their REDIS_URL names the first master, so a process that ignored
the sentinels would be caught talking to a replica). Each test makes the sentinels promote the
replica (SENTINEL FAILOVER) and checks the same process works on the new master.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_examples import find_examples

from adapters.store import BundleStore
from process_manager.bundle import FINAL, Bundle, Status
from tests.helpers import book_args, request
from tests.needs import missing
from tests.outsider import outsider
from tests.reliability.sentinel_stack import MASTER_NAME, SentinelStack
from vip_bundles import local_stack


class HA:
    """The sentinel stack with a worker, beat and the HTTP door on it, each used once before
    the promotion; a client app and a store that follow the master, for the tests."""

    def __init__(self, logdir: Path, gateway_url: str) -> None:
        self.stack = SentinelStack()
        self.env = local_stack.celery_env(
            **self.stack.env(), GATEWAY_URL=gateway_url, RECONCILE_EVERY_S="1"
        )
        self.app = self.stack.celery_app()
        self.store = BundleStore(self.stack.client())
        self.logdir = logdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.worker = local_stack.start_worker(
            self.env, name="ha@localhost", logdir=logdir, control_app=self.app
        )
        (logdir / "beat").mkdir()
        self.beat = local_stack.start_beat(self.env, logdir / "beat")
        self.processes.append(self.beat)
        port = local_stack.free_port()
        self.door = subprocess.Popen(
            [sys.executable, "-m", "vip_bundles", "api", "--port", str(port)],
            env=self.env,
            cwd=local_stack.ROOT,
            preexec_fn=local_stack.die_with_parent,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(self.door)
        self.url = f"http://127.0.0.1:{port}"
        flower_port = str(local_stack.free_port())
        self.flower_url = f"http://127.0.0.1:{flower_port}"
        self.flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={flower_port}"],
            env={**self.env, "FLOWER_UNAUTHENTICATED_API": "true"},
            cwd=local_stack.ROOT,
            preexec_fn=local_stack.die_with_parent,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(logdir / "flower.log").open("w"),
        )
        self.processes.append(self.flower)
        local_stack.wait_for_http(f"{self.url}/health")
        local_stack.wait_for_http(f"{self.flower_url}/metrics")

    def book(self, body: dict[str, Any]) -> str:
        answer = self.app.send_task("vip_bundle.book", kwargs=body, queue="vip-bundles")
        return answer.get(timeout=60)["vip_bundle_id"]

    def wait(self, bundle_id: str, timeout: float = 60) -> Bundle:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bundle = self.store.get(bundle_id)
            if bundle is not None and bundle.status in FINAL:
                return bundle
            time.sleep(0.1)
        raise AssertionError(f"bundle {bundle_id} not settled: {self.store.get(bundle_id)}")

    def reconciles(self) -> int:
        """Reconciler runs beat sent that the worker received."""
        return self.worker.logfile.read_text().count("Task vip_bundle.reconcile[")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vip_bundles", *args],
            env=self.env,
            cwd=local_stack.ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def close(self) -> None:
        for proc in self.processes:
            local_stack.stop_process(proc)
        self.worker.stop()
        self.app.close()
        self.stack.close()


@dataclass
class Promoted:
    """What each process did before the promotion, and the masters before and after."""

    ha: HA
    booked_before: Bundle
    http_before: httpx.Response
    old: int
    new: int
    reconciles_at_promotion: int


@pytest.fixture(scope="module")
def promoted(simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Promoted]:
    """Every process used once, then SENTINEL FAILOVER (once for the module: a promotion and
    the sentinels turning the old master into a replica take ~11 s)."""
    if not shutil.which("redis-server"):
        missing("redis-server is not installed")
    ha = HA(tmp_path_factory.mktemp("ha-logs"), simulator.url)
    try:
        booked = ha.wait(ha.book(request()))
        http = httpx.post(f"{ha.url}/book-vip-bundle", json=request(), timeout=60)
        local_stack._wait(lambda: ha.reconciles() > 0, 60, "beat's first reconcile")
        old, new = ha.stack.failover()
        yield Promoted(ha, booked, http, old, new, ha.reconciles())
    finally:
        ha.close()


def test_a_worker_follows_a_promotion_without_a_restart(promoted: Promoted, sim):
    ha = promoted.ha
    after = ha.wait(ha.book(request()))

    assert promoted.booked_before.status is after.status is Status.FINALIZED
    assert promoted.old != promoted.new and ha.worker.process.poll() is None  # the same worker
    # The bundle booked after the promotion is on the new master (where the sentinels point).
    new_master = ha.stack.node(promoted.new).client()
    assert new_master.exists(f"vip-bundles:bundle:{after.vip_bundle_id}")


def test_the_http_door_follows_a_promotion_without_a_restart(promoted: Promoted, sim):
    ha, first = promoted.ha, promoted.http_before
    second = httpx.post(f"{ha.url}/book-vip-bundle", json=request(), timeout=60)
    cancel = httpx.post(
        f"{ha.url}/vip-bundles/{first.json()['vip_bundle_id']}/cancel",
        json={"reason": "after the failover"},
        timeout=60,
    )

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert cancel.status_code == 202, cancel.text
    assert httpx.get(f"{ha.url}/health", timeout=30).status_code == 200
    assert ha.wait(first.json()["vip_bundle_id"]).status is Status.CANCELLED
    assert ha.wait(second.json()["vip_bundle_id"]).status is Status.FINALIZED
    assert ha.door.poll() is None  # the same process


def test_beat_keeps_sending_after_a_promotion_without_a_restart(promoted: Promoted):
    ha = promoted.ha
    local_stack._wait(
        lambda: ha.reconciles() >= promoted.reconciles_at_promotion + 3, 60, "reconciles after it"
    )
    assert ha.beat.poll() is None


def test_flower_sees_the_workers_after_a_promotion_without_a_restart(promoted: Promoted):
    ha = promoted.ha

    def workers() -> list[str]:
        answer = httpx.get(f"{ha.flower_url}/api/workers?refresh=1", timeout=30)
        return list(answer.json()) if answer.status_code == 200 else []

    local_stack._wait(lambda: ha.worker.name in workers(), 60, "Flower to list the worker")
    assert ha.flower.poll() is None


def test_the_cli_books_reads_and_cancels_on_the_new_master(promoted: Promoted, sim):
    ha, body = promoted.ha, request()
    book = ha.cli(*book_args(body))
    assert book.returncode == 0, book.stderr
    bundle_id = json.loads(book.stdout)["vip_bundle_id"]
    status = ha.cli("status", bundle_id)
    cancel = ha.cli("cancel", bundle_id, "--reason", "changed plans")

    assert status.returncode == 0, status.stderr
    assert bundle_id in status.stdout
    assert cancel.returncode == 0, cancel.stderr
    assert ha.wait(bundle_id).status is Status.CANCELLED


def test_a_door_1_caller_books_through_the_sentinels_with_celerys_own_settings(
    promoted: Promoted, sim, tmp_path: Path
):
    """The README's snippet, run with only `celery[redis]` installed after the promotion (its
    example addresses and master name replaced by the stack's): Celery asks the sentinels for
    the master, as our processes do (intake contract, "Redis high availability")."""
    ha = promoted.ha
    [snippet] = [
        e.source
        for e in find_examples(local_stack.ROOT / "README.md")
        if e.prefix == "python" and "sentinel://" in e.source
    ]
    for example, sentinel in zip(README_SENTINELS, ha.stack.sentinels, strict=True):
        snippet = snippet.replace(example, f"127.0.0.1:{sentinel.port}")
    snippet = snippet.replace('"master_name": "vip-bundles"', f'"master_name": "{MASTER_NAME}"')
    out = outsider(tmp_path).run(snippet, ha.stack.redis_url)
    bundle_id = re.search(r"'vip_bundle_id': '([0-9a-f-]{36})'", out)

    assert bundle_id, out
    assert ha.wait(bundle_id.group(1)).status is Status.FINALIZED


README_SENTINELS = ("10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379")


def test_no_answer_before_a_replica_has_the_bundle_and_the_same_request_again_is_answered(
    promoted: Promoted, sim
):
    """The replica stops acknowledging (SIGSTOP): the HTTP door answers 503 in the errors
    shape and the Celery door raises, instead of confirming what a failover could lose; once
    it is back, the same request is answered with the same ids (idempotent)."""
    ha, body = promoted.ha, request(vip_bundle_id=str(uuid.uuid4()))
    replica = next(n for n in ha.stack.data if n.port != ha.stack.master_port())
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)
    try:
        refused = httpx.post(f"{ha.url}/book-vip-bundle", json=body, timeout=60)
        celery = ha.app.send_task("vip_bundle.book", kwargs=request(), queue="vip-bundles")
        with pytest.raises(Exception, match="no replica acknowledged"):
            celery.get(timeout=60)
    finally:
        replica.process.send_signal(signal.SIGCONT)
    ha.stack.wait_settled()
    again = httpx.post(f"{ha.url}/book-vip-bundle", json=body, timeout=60)

    assert refused.status_code == 503, refused.text
    assert refused.json()["errors"][0]["field"] == "redis"
    assert again.status_code == 201, again.text
    assert again.json()["vip_bundle_id"] == body["vip_bundle_id"]
    assert ha.wait(body["vip_bundle_id"]).status is Status.FINALIZED

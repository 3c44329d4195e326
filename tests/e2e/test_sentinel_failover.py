"""Every kind of process follows a Sentinel promotion by itself, without a restart.

A private Redis master, its replica and three sentinels (tests/reliability/sentinel_stack.py)
serve a worker, beat, the HTTP door and the CLI, started with REDIS_SENTINELS and
REDIS_SENTINEL_MASTER only (their REDIS_URL names the first master, so a process that ignored
the sentinels would be caught talking to a replica). Each test makes the sentinels promote the
replica (SENTINEL FAILOVER) and checks the same process works on the new master.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.store import BundleStore
from process_manager.bundle import FINAL, Bundle, Status
from tests.helpers import request
from tests.outsider import outsider
from tests.reliability.sentinel_stack import MASTER_NAME, SentinelStack
from vip_bundles import local_stack


class HA:
    """The sentinel stack, a client app and store that follow it, and one worker on it."""

    def __init__(self, logdir: Path, gateway_url: str) -> None:
        self.stack = SentinelStack()
        self.env = local_stack.celery_env(**self.stack.env(), GATEWAY_URL=gateway_url)
        self.app = self.stack.celery_app()
        self.store = BundleStore(self.stack.client())
        self.logdir = logdir
        self.worker = local_stack.start_worker(
            self.env, name="ha@localhost", logdir=logdir, control_app=self.app
        )
        self.processes: list[subprocess.Popen[bytes]] = []

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


@pytest.fixture(scope="module")
def ha(simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    if not local_stack.shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    setup = HA(tmp_path_factory.mktemp("ha-logs"), simulator.url)
    yield setup
    setup.close()


def test_a_worker_follows_a_promotion_without_a_restart(ha: HA, sim):
    before = ha.wait(ha.book(request()))
    old, new = ha.stack.failover()
    after = ha.wait(ha.book(request()))

    assert before.status is after.status is Status.FINALIZED
    assert old != new and ha.worker.process.poll() is None  # the same worker process
    # The bundle booked after the promotion is on the new master (where the sentinels point).
    assert ha.stack.node(new).client().exists(f"vip-bundles:bundle:{after.vip_bundle_id}")


def test_the_http_door_follows_a_promotion_without_a_restart(ha: HA, sim):
    port = local_stack.free_port()
    door = subprocess.Popen(
        [sys.executable, "-m", "vip_bundles", "api", "--port", str(port)],
        env=ha.env,
        cwd=local_stack.ROOT,
        preexec_fn=local_stack.die_with_parent,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ha.processes.append(door)
    url = f"http://127.0.0.1:{port}"
    local_stack.wait_for_http(f"{url}/health")
    first = httpx.post(f"{url}/book-vip-bundle", json=request(), timeout=60)
    ha.stack.failover()
    second = httpx.post(f"{url}/book-vip-bundle", json=request(), timeout=60)
    cancel = httpx.post(
        f"{url}/vip-bundles/{first.json()['vip_bundle_id']}/cancel",
        json={"reason": "after the failover"},
        timeout=60,
    )

    assert first.status_code == 201, first.text
    assert second.status_code == 201, second.text
    assert cancel.status_code == 202, cancel.text
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
    assert ha.wait(first.json()["vip_bundle_id"]).status is Status.CANCELLED
    assert ha.wait(second.json()["vip_bundle_id"]).status is Status.FINALIZED
    assert door.poll() is None


def test_the_cli_reads_and_cancels_on_the_new_master(ha: HA, sim):
    bundle_id = ha.book(request())
    ha.stack.failover()
    status = ha.cli("status", bundle_id)
    cancel = ha.cli("cancel", bundle_id, "--reason", "changed plans")

    assert status.returncode == 0, status.stderr
    assert bundle_id in status.stdout
    assert cancel.returncode == 0, cancel.stderr
    assert ha.wait(bundle_id).status is Status.CANCELLED


def test_beat_keeps_sending_after_a_promotion_without_a_restart(ha: HA):
    beat_dir = ha.logdir / "beat"
    beat_dir.mkdir(exist_ok=True)
    beat = local_stack.start_beat({**ha.env, "RECONCILE_EVERY_S": "1"}, beat_dir)
    ha.processes.append(beat)

    def reconciles() -> int:
        return ha.worker.logfile.read_text().count("Task vip_bundle.reconcile[")

    local_stack._wait(lambda: reconciles() > 0, 60, "beat's first reconcile")
    ha.stack.failover()
    after_failover = reconciles()
    local_stack._wait(lambda: reconciles() >= after_failover + 3, 60, "reconciles after it")
    assert beat.poll() is None


def test_a_door_1_caller_books_through_the_sentinels_with_celerys_own_settings(
    ha: HA, sim, tmp_path: Path
):
    """Only `celery[redis]` installed: the settings the README gives (intake contract)."""
    sentinels = ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in ha.stack.sentinels)
    code = f"""
        from celery import Celery

        SENTINELS = {sentinels!r}
        app = Celery(broker=SENTINELS, backend=SENTINELS)
        app.conf.broker_transport_options = {{"master_name": {MASTER_NAME!r}}}
        app.conf.result_backend_transport_options = {{"master_name": {MASTER_NAME!r}}}
        request = {request()!r}
        answer = app.send_task("vip_bundle.book", kwargs=request, queue="vip-bundles")
        print(answer.get(timeout=60)["vip_bundle_id"])
    """
    caller = outsider(tmp_path)
    first = caller.run(code, ha.stack.redis_url).strip()
    ha.stack.failover()
    second = caller.run(code, ha.stack.redis_url).strip()

    assert ha.wait(first).status is Status.FINALIZED
    assert ha.wait(second).status is Status.FINALIZED

"""Flower sees the saga: a real `celery flower` lists a bundle's tasks with its id in their args."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from process_manager.bundle import Status
from tasks.celery_app import app
from tests.helpers import Saga, request
from vip_bundles import local_stack

AUTH = ("ops", "s3cret")
SAGA_TASKS = ["vip_bundle.book", "vip_bundle.book_show_tickets", "vip_bundle.book_flight"]


@pytest.fixture(scope="module")
def flower(worker_env: dict[str, str], worker: local_stack.Worker) -> Iterator[str]:
    port = local_stack.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
            f"--basic-auth={AUTH[0]}:{AUTH[1]}",
        ],
        env=worker_env,
        cwd=local_stack.ROOT,
        start_new_session=True,
        preexec_fn=local_stack.die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    local_stack.wait_for_http(f"{url}/healthcheck")
    # Workers send no task events until someone watches: Flower turns them on by itself
    # (enable_events, every 5 s). Probe with a harmless task until Flower lists one.
    deadline = time.monotonic() + 30
    while not httpx.get(
        f"{url}/api/tasks", params={"taskname": "vip_bundle.reconcile"}, auth=AUTH, timeout=5
    ).json():
        assert time.monotonic() < deadline, "flower never turned the worker's task events on"
        app.send_task("vip_bundle.reconcile")
        time.sleep(0.5)
    yield url
    local_stack.stop_process(proc)


def test_flower_lists_a_bundles_tasks_with_its_id(flower: str, saga: Saga):
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401  # auth is on
    bundle = saga.run(request())
    assert bundle.status is Status.FINALIZED

    seen: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(seen) != set(SAGA_TASKS):
        for name in SAGA_TASKS:
            tasks = httpx.get(
                f"{flower}/api/tasks", params={"taskname": name}, auth=AUTH, timeout=5
            ).json()
            mine = [
                t
                for t in tasks.values()
                if bundle.vip_bundle_id in f"{t.get('args')}{t.get('kwargs')}{t.get('result')}"
            ]
            if mine:
                seen[name] = mine
        time.sleep(0.3)
    assert set(seen) == set(SAGA_TASKS)
    assert len(seen["vip_bundle.book_flight"]) == 2  # inbound and return
    assert all(t["state"] == "SUCCESS" for ts in seen.values() for t in ts)
    metrics = httpx.get(f"{flower}/metrics", timeout=5).text
    assert "flower_events_total" in metrics

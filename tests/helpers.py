"""What the saga tests share: requests, waiting for a final state, reading partner effects."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from partner_simulator.server import SimulatorClient
from process_manager.bundle import FINAL, Bundle, Status
from process_manager.messages import example_request
from tasks.celery_app import app, redis_client, store

SETTLED = {*FINAL, Status.COMPENSATION_FAILED}
request = example_request  # fresh show and flight ids each time, so tests never share seats


@dataclass
class Saga:
    sim: SimulatorClient

    def book(self, body: dict[str, Any], timeout: float = 20) -> dict[str, str]:
        """Through the Celery door, exactly as an outside service would."""
        result = app.send_task("vip_bundle.book", kwargs=body, queue="vip-bundles")
        return result.get(timeout=timeout)

    def wait(
        self, bundle_id: str, timeout: float = 60, until: set[Status] | frozenset[Status] = SETTLED
    ) -> Bundle:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bundle = store().get(bundle_id)
            if bundle is not None and bundle.status in until:
                return bundle
            time.sleep(0.05)
        raise AssertionError(f"bundle {bundle_id} not in {until}: {store().get(bundle_id)}")

    def run(self, body: dict[str, Any], timeout: float = 60) -> Bundle:
        return self.wait(self.book(body)["vip_bundle_id"], timeout)

    def events(self, bundle_id: str) -> list[str]:
        """Names of the events on the stream for this bundle, in order."""
        entries = redis_client().xrange(store().stream)
        return [
            f[b"event_name"].decode()
            for _, f in entries
            if f[b"vip_bundle_id"].decode() == bundle_id
        ]

    def calls(self, bundle: Bundle, path_prefix: str) -> list[dict[str, Any]]:
        """Partner calls (answered, not faulted) that belong to this bundle."""
        mine = {
            bundle.vip_bundle_id,
            bundle.booking_id,
            *bundle.ticket_ids,
            *bundle.flight_ticket_ids(),
        }
        out = []
        for call in self.sim.calls(path_prefix=path_prefix):
            if call.get("fault"):
                continue
            body = call.get("body") or {}
            blob = " ".join([call["path"], *map(str, body.values())])
            if any(i in blob for i in mine):
                out.append(call)
        return out


def book_args(body: dict) -> list[str]:
    """`vip-bundles book ...` arguments for a request body (the CLI's door)."""
    args = [
        "book",
        "--customer-email",
        body["customer_email"],
        "--show-id",
        body["show_id"],
        "--inbound-flight-id",
        body["inbound_flight_id"],
        "--return-flight-id",
        body["return_flight_id"],
    ]
    for name in body["passengers"]:
        args += ["--passenger", name]
    return args


def cli_in(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`vip-bundles ARGS` in a process of its own with exactly `env` (a stack of the test's
    own: its TLS servers, users and files), output captured, wide enough not to wrap."""
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", *args],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )

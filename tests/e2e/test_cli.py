"""Door 3 and the demo, run as a user runs them: the `vip-bundles` command in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

from process_manager import versions
from tests.helpers import Saga, book_args, request
from vip_bundles import local_stack


def vip_bundles(*args: str, timeout: float = 120, **env_changes: str):
    env = local_stack.celery_env(COLUMNS="200", **env_changes)
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_book_status_and_list(saga: Saga):
    out = vip_bundles(*book_args(request()), "--count", "3", "--wait")
    assert out.returncode == 0, out.stderr
    assert "3 finalized" in out.stdout

    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    out = vip_bundles(*book_args(body), "--wait")
    assert out.returncode == 0, out.stderr
    bundle_id, status = re.search(r"([0-9a-f-]{36}): (\w+)", out.stdout).groups()
    assert status == "failed"

    out = vip_bundles("status", bundle_id)
    assert out.returncode == 0, out.stderr
    for text in ("FlightBookingFailed_v1", "TicketRefunded_v1", "VipBundleFailed_v1"):
        assert text in out.stdout
    release = f"created by release {versions.RELEASE}, last moved by release {versions.RELEASE}"
    assert release in out.stdout
    out = vip_bundles("list", "--status", "failed")
    assert bundle_id in out.stdout


def test_bad_input_is_refused_naming_the_field(saga: Saga):
    out = vip_bundles(*book_args(request(customer_email="nope")), "--number-of-tickets", "0")
    assert out.returncode == 1
    assert "customer_email" in out.stdout and "number_of_tickets" in out.stdout
    assert vip_bundles("list", "--status", "nonsense").returncode == 2
    assert vip_bundles("status", "no-such-bundle").returncode == 1


def test_demo_books_bundles_and_shows_both_outcomes(claim_db):
    # A database of its own: the demo's worker must not share queues with the session's.
    out = vip_bundles("demo", timeout=300, REDIS_URL=claim_db())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "using the Redis server" in out.stdout
    assert "finalized" in out.stdout and "failed" in out.stdout
    assert "refunded 2 tickets" in out.stdout and "cancelled inbound flight" in out.stdout
    assert "Stopped what the demo started" in out.stdout

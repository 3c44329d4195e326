"""Retention end to end: bundles settled past RETENTION_S leave Redis for the archive
(`vip-bundles archive run`, with the clock moved on), and every door still finds them as a
caller would: HTTP (JSON, page, search, pages, resume, cancel, booking the same id again),
the Celery door, the CLI (status, audit)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from partner_simulator.server import SimulatorServer
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tasks.celery_app import app, store
from tests.e2e.api_server import api_server
from tests.helpers import Saga, request
from vip_bundles import local_stack

RETENTION = 604_800
LATER = str(RETENTION + 60)  # CLOCK_OFFSET_S: a week and a minute from now


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", *args],
        env=local_stack.celery_env(COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def archived(saga: Saga, body: dict) -> Bundle:
    """Book `body`, wait until it settles, then archive everything settled (a week later)."""
    bundle = saga.run(body)
    out = cli("archive", "run", CLOCK_OFFSET_S=LATER)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("archived ") and " 0 bundles" not in out.stdout
    assert store().get(bundle.vip_bundle_id) is None  # left Redis
    return bundle


@pytest.fixture
def archiving(archive_url: str) -> str:
    return archive_url


def test_doors_see_an_archived_bundle_as_a_live_one(saga: Saga, archiving: str):
    body = request()
    bundle = archived(saga, body)
    bid = bundle.vip_bundle_id

    with api_server() as url:
        got = httpx.get(f"{url}/vip-bundles/{bid}")
        assert got.status_code == 200
        data = got.json()
        assert data["status"] == "finalized" and data["archived_at"]
        assert [h["event"] for h in data["history"]][-1] == "VipBundleFinalized_v1"
        page = httpx.get(f"{url}/vip-bundles/{bid}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'id="archived"' in page.text
        for text in (bid, bundle.booking_id, body["customer_email"].upper(), bid):
            found = httpx.get(f"{url}/vip-bundles", params={"q": text}).json()
            assert bid in [i["vip_bundle_id"] for i in found["items"]], text
        live = store().count(Status.FINALIZED)
        listed = httpx.get(
            f"{url}/vip-bundles", params={"status": "finalized", "offset": live, "limit": 5}
        ).json()
        assert listed["total"] > live
        assert listed["items"][0]["vip_bundle_id"] == bid
        assert listed["items"][0]["archived_at"]
        resumed = httpx.post(f"{url}/vip-bundles/{bid}/resume")
        assert resumed.status_code == 409

        # The same id again: the same answer and nothing booked; another request is refused.
        calls = len(saga.sim.calls())
        again = httpx.post(f"{url}/book-vip-bundle", json={**body, "vip_bundle_id": bid})
        assert again.status_code == 201
        assert again.json() == {"vip_bundle_id": bid, "booking_id": bundle.booking_id}
        other = {**body, "vip_bundle_id": bid, "customer_email": "someone.else@example.com"}
        refused = httpx.post(f"{url}/book-vip-bundle", json=other)
        assert refused.status_code == 422
        assert refused.json()["errors"][0]["field"] == "vip_bundle_id"
    same = app.send_task(
        "vip_bundle.book", kwargs={**body, "vip_bundle_id": bid}, queue="vip-bundles"
    )
    assert same.get(timeout=30) == {"vip_bundle_id": bid, "booking_id": bundle.booking_id}
    with pytest.raises(Exception, match="vip_bundle_id") as refusal:
        app.send_task("vip_bundle.book", kwargs=other, queue="vip-bundles").get(timeout=30)
    assert not isinstance(refusal.value, CeleryTimeout)
    assert len(saga.sim.calls()) == calls  # no partner was called again
    assert store().get(bid) is None

    status = cli("status", bid)
    assert status.returncode == 0, status.stderr
    assert "finalized" in status.stdout and "archived_at" in status.stdout
    as_json = json.loads(cli("status", bid, "--json").stdout)
    assert as_json["archived_at"] and as_json["history"]
    listed = cli("list", "--status", "finalized", "--limit", "100000")
    assert bid in listed.stdout


def test_an_archived_finalized_bundle_is_cancelled_and_the_audit_covers_archived_ones(
    saga: Saga, simulator: SimulatorServer, archiving: str
):
    kept, cancelled = saga.run(request()), request()
    bundle = archived(saga, cancelled)
    # From just before this test's first bundle: bundles of earlier test files in this process
    # (some booked at partners of their own, e.g. an HTTPS simulator) are not this audit's.
    since = int(kept.created_at.timestamp()) - 1
    gateway = {"GATEWAY_URL": simulator.url}

    audit = cli("audit", "--since", str(_iso(since)), **gateway)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert store().get(kept.vip_bundle_id) is None  # both audited from the archive

    with api_server() as url:
        answer = httpx.post(
            f"{url}/vip-bundles/{bundle.vip_bundle_id}/cancel", json={"reason": "plans changed"}
        )
        assert answer.status_code == 202, answer.text
    done = saga.wait(bundle.vip_bundle_id, until={Status.CANCELLED})
    assert done.archived_at is None and done.cancellation is not None
    flights = {t["ticket_id"]: t for t in saga.sim.flight_tickets(bundle.vip_bundle_id)}
    assert all(flights[t]["cancelled"] for t in done.flight_ticket_ids())
    assert {r["payment_reference"] for r in saga.sim.refunds()} >= set(done.ticket_ids)

    # Drift on the still-archived one: the audit finds it there.
    ticket = kept.flight_tickets[Leg.RETURN][0]
    gone = httpx.delete(f"{simulator.url}/transportation-api/flight-tickets/{ticket}")
    assert gone.status_code == 204
    found = cli("audit", "--since", str(_iso(since)), "--json", **gateway)
    assert found.returncode == 1, found.stdout + found.stderr
    findings = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(f["vip_bundle_id"], f["kind"]) for f in findings] == [
        (kept.vip_bundle_id, "flight_ticket_cancelled")
    ]

    # Cancelled again later: archived again, and its row says cancelled now.
    cli("archive", "run", CLOCK_OFFSET_S=LATER)
    with api_server() as url:
        got = httpx.get(f"{url}/vip-bundles/{bundle.vip_bundle_id}").json()
        assert got["status"] == "cancelled" and got["archived_at"]
        again = httpx.post(
            f"{url}/vip-bundles/{bundle.vip_bundle_id}/cancel", json={"reason": "again"}
        )
        assert again.status_code == 202 and again.json()["status"] == "cancelled"


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat()


def test_without_archive_url_nothing_leaves_redis_and_stats_say_so(saga: Saga):
    bundle = saga.run(request())
    out = cli("archive", "run", CLOCK_OFFSET_S=LATER, ARCHIVE_URL="")
    assert out.returncode == 2 and "ARCHIVE_URL" in out.stderr
    assert store().get(bundle.vip_bundle_id) is not None
    stats = cli("stats", ARCHIVE_URL="")
    assert stats.returncode == 0, stats.stderr
    assert "Redis memory" in stats.stdout and "never leave Redis" in stats.stdout


def test_console_and_metrics_show_redis_memory_and_retention(saga: Saga, archiving: str):
    saga.run(request())
    with api_server() as url:
        memory = httpx.get(f"{url}/dashboard.json").json()["memory"]
        assert memory["used_bytes"] > 0 and memory["settled_bundles"] >= 1
        assert memory["archiving"] is True
        assert any("move to the archive" in line for line in memory["lines"])
        page = httpx.get(f"{url}/").text
        assert 'id="memory"' in page and "Redis memory" in page
        metrics = httpx.get(f"{url}/metrics").text
        for name in ("redis_used_memory_bytes", "redis_maxmemory_bytes", "settled_memory_bytes"):
            assert f"vip_bundles_{name} " in metrics


def test_the_celery_door_cancels_archived_bundles_as_live_ones(saga: Saga, archiving: str):
    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    failed = saga.run(body)
    assert failed.status is Status.FAILED
    archived(saga, request())  # archives everything settled, the failed one too
    assert store().get(failed.vip_bundle_id) is None

    def cancel(bundle_id: str) -> dict:
        kwargs = {"vip_bundle_id": bundle_id, "reason": "changed plans"}
        return app.send_task("vip_bundle.cancel", kwargs=kwargs, queue="vip-bundles").get(30)

    with pytest.raises(Exception, match="already failed"):
        cancel(failed.vip_bundle_id)
    assert store().get(failed.vip_bundle_id) is None  # refused: not brought back
    with pytest.raises(Exception, match="no vip bundle"):
        cancel(str(uuid.uuid4()))

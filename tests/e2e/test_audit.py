"""The audit end to end: bundles settled by a real worker against the simulator, drift made
behind the product's back with the simulator's /_sim controls, then `vip-bundles audit` in a
subprocess and the beat task run through the worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx

from adapters.partners import Partners
from adapters.settings import get_settings
from partner_simulator.server import SimulatorServer
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tasks.audit import audit
from tasks.celery_app import app, redis_client, store
from tests.helpers import Saga, request
from vip_bundles import local_stack, views


def audit_command(gateway_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`vip-bundles audit ...` as an operator runs it, against this run's Redis and partners."""
    env = local_stack.celery_env(GATEWAY_URL=gateway_url)
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def finalized_and_failed(saga: Saga) -> tuple[Bundle, Bundle]:
    done = saga.run(request())
    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    undone = saga.run(body)
    assert (done.status, undone.status) == (Status.FINALIZED, Status.FAILED)
    return done, undone


def test_audit_is_clean_then_names_each_drift_finding(saga: Saga, simulator: SimulatorServer):
    since = datetime.now(UTC).isoformat()
    done, undone = finalized_and_failed(saga)

    clean = audit_command(simulator.url, "--since", since)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout == ""
    assert "audited 2 settled bundles: 0 findings" in clean.stderr

    # Drift: a finalized bundle's return ticket cancelled with the partner's own DELETE; the
    # failed bundle's inbound ticket revived, a refund forgotten, a receipt un-voided.
    cancelled = done.flight_tickets[Leg.RETURN][0]
    revived = undone.flight_tickets[Leg.INBOUND][0]
    unrefunded, unvoided = undone.ticket_ids
    gone = httpx.delete(f"{simulator.url}/transportation-api/flight-tickets/{cancelled}")
    assert gone.status_code == 204
    saga.sim.revive_flight_ticket(revived)
    assert saga.sim.forget_refunds(unrefunded) == 1
    saga.sim.unvoid_receipt(unvoided)

    found = audit_command(simulator.url, "--since", since)
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert len(lines) == 4, found.stdout
    expected = {
        f"flight_ticket_cancelled:{cancelled}": done.vip_bundle_id,
        f"flight_ticket_active:{revived}": undone.vip_bundle_id,
        f"refund_missing:{unrefunded}": undone.vip_bundle_id,
        f"receipt_not_voided:{unvoided}": undone.vip_bundle_id,
    }
    for key, bundle_id in expected.items():
        kind, record_id = key.split(":")
        (line,) = [line for line in lines if f" {kind}: " in line]
        assert line.startswith(bundle_id) and record_id in line
    assert any('"cancelled":true' in line for line in lines)  # the partner's record
    assert any('"voided":false' in line for line in lines)

    as_json = audit_command(simulator.url, "--since", since, "--json")
    assert as_json.returncode == 1
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {o["key"]: o["vip_bundle_id"] for o in objects} == expected
    revived_record = next(o["record"] for o in objects if o["kind"] == "flight_ticket_active")
    assert revived_record["ticket_id"] == revived and revived_record["cancelled"] is False
    assert all(o["description"] and o["status"] in ("finalized", "failed") for o in objects)

    newest = audit_command(simulator.url, "--since", since, "--limit", "1", "--json")
    assert {json.loads(line)["vip_bundle_id"] for line in newest.stdout.splitlines()} == {
        undone.vip_bundle_id
    }


def run_periodic_audit(timeout: float = 60) -> None:
    """Send `vip_bundle.audit` through the broker and wait until the worker has run it (it
    moves the audit cursor when done)."""
    before = store().audit_cursor()
    app.send_task("vip_bundle.audit")
    deadline = time.monotonic() + timeout
    while store().audit_cursor() == before:
        assert time.monotonic() < deadline, "vip_bundle.audit did not run"
        time.sleep(0.1)


def drift_events(bundle_id: str) -> list[dict]:
    return [
        json.loads(fields[b"data"])
        for _, fields in redis_client().xrange(store().stream)
        if fields[b"vip_bundle_id"].decode() == bundle_id
        and fields[b"event_name"] == b"LedgerDriftDetected_v1"
    ]


def test_periodic_audit_publishes_each_drift_once_and_it_shows_in_history(saga: Saga):
    done, undone = finalized_and_failed(saga)
    unrefunded, unvoided = undone.ticket_ids
    saga.sim.forget_refunds(unrefunded)
    saga.sim.unvoid_receipt(unvoided)

    run_periodic_audit()
    run_periodic_audit()

    events = drift_events(undone.vip_bundle_id)
    assert sorted(e["payload"]["finding_key"] for e in events) == [
        f"receipt_not_voided:{unvoided}",
        f"refund_missing:{unrefunded}",
    ]
    assert {e["header"]["idempotency_key"] for e in events} == {
        f"{undone.vip_bundle_id}:drift-receipt_not_voided:{unvoided}",
        f"{undone.vip_bundle_id}:drift-refund_missing:{unrefunded}",
    }
    assert drift_events(done.vip_bundle_id) == []
    stored = store().require(undone.vip_bundle_id)
    assert stored.status is Status.FAILED
    drift_steps = [h for h in stored.history if h.event == "LedgerDriftDetected_v1"]
    assert len(drift_steps) == 2
    assert all(h.from_status is h.to_status is Status.FAILED for h in drift_steps)
    view = views.bundle_view(stored)
    assert {d["kind"] for d in view["drift"]} == {"refund_missing", "receipt_not_voided"}
    assert sum(h["event"] == "LedgerDriftDetected_v1" for h in view["history"]) == 2

    # Drift that appears later, within the re-audit window, is found on the next run.
    saga.sim.revive_flight_ticket(undone.flight_tickets[Leg.INBOUND][1])
    run_periodic_audit()
    assert len(drift_events(undone.vip_bundle_id)) == 3


def test_filtered_calls_whole_lists_and_chunks_find_the_same(
    saga: Saga, simulator: SimulatorServer
):
    done, undone = finalized_and_failed(saga)
    saga.sim.unvoid_receipt(undone.ticket_ids[0])
    ids = [done.vip_bundle_id, undone.vip_bundle_id]
    until = time.time()

    def run(filtered_calls: int, chunk: int = 1000) -> tuple[list[str], int]:
        since = saga.sim.calls()[-1]["seq"]
        client = Partners(simulator.url)
        try:
            results = list(audit(store(), client, ids, until, filtered_calls, chunk))
        finally:
            client.close()
        found = [f.key for _, fs in results for f in fs]
        return found, len(saga.sim.calls(since=since))

    # Two bundles, the failed one with two show tickets: 2 + 2 x 2 filtered calls.
    assert run(filtered_calls=20) == ([f"receipt_not_voided:{undone.ticket_ids[0]}"], 6)
    assert run(filtered_calls=0) == ([f"receipt_not_voided:{undone.ticket_ids[0]}"], 3)
    assert run(filtered_calls=20, chunk=1) == ([f"receipt_not_voided:{undone.ticket_ids[0]}"], 3)


def test_beat_runs_the_audit_on_the_compensation_queue():
    entry = app.conf.beat_schedule["audit-vip-bundles"]
    assert entry["task"] == "vip_bundle.audit"
    assert entry["schedule"] == get_settings().audit_every_s
    assert entry["options"]["queue"] == "vip-bundles.compensation"
    assert app.amqp.router.route({}, "vip_bundle.audit")["queue"].name == (
        "vip-bundles.compensation"
    )

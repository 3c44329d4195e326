"""The operator's doors: the console (in a real headless Chromium), search, resume, /metrics,
`vip-bundles resume` and `stats`, against real workers, Redis and the partner simulator."""

from __future__ import annotations

import ast
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from partner_simulator.server import SimulatorClient
from process_manager.bundle import Status
from tests.e2e.api_server import api_server
from tests.e2e.browser import chromium_binary, parse, run_chromium
from tests.e2e.test_cli import vip_bundles
from tests.helpers import Saga, request
from vip_bundles import local_stack
from vip_bundles.api import create_app
from vip_bundles.guard.keys import ApiKey

SETTLED = ("finalized", "failed", "cancelled", "compensation_failed")


@pytest.fixture(scope="module")
def api(worker: local_stack.Worker) -> Iterator[httpx.Client]:
    with api_server() as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


def settle(api: httpx.Client, bundle_id: str, until: tuple[str, ...] = SETTLED) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bundle = api.get(f"/vip-bundles/{bundle_id}").json()
        if bundle.get("status") in until:
            return bundle
        time.sleep(0.1)
    raise AssertionError(f"bundle {bundle_id} not in {until}: {bundle}")


def book(api: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    r = api.post("/book-vip-bundle", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["vip_bundle_id"]


def parked(api: httpx.Client, sim: SimulatorClient) -> dict[str, Any]:
    """A bundle whose rollback cannot refund (payments answer 400, outside the contract: not
    retried, not an outage the circuit breaker would wait out): parked at once."""
    body = request()
    sim.set_flight_seats(body["inbound_flight_id"], 0)
    sim.fault("/payments-api", status=400, rate=1.0)
    try:
        bundle = settle(api, book(api, body))
    finally:
        sim.clear_faults()
    assert bundle["status"] == "compensation_failed"
    return bundle


def metrics(api: httpx.Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def gauge(api: httpx.Client) -> dict[str, int]:
    return {dict(k)["status"]: int(v) for k, v in metrics(api)["vip_bundles_bundles"].items()}


@pytest.fixture(scope="module")
def browser() -> str:
    return chromium_binary()


# --- the console, in a browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(api: httpx.Client, worker: local_stack.Worker, simulator) -> dict[str, str]:
    """Bundles in several states: finalized, failed (sold out), cancelled, parked."""
    sim = simulator.client()
    try:
        finalized = [book(api, request()) for _ in range(3)]
        sold_out = request()
        sim.set_flight_seats(sold_out["return_flight_id"], 0)
        failed = book(api, sold_out)
        for bundle_id in [*finalized, failed]:
            settle(api, bundle_id)
        cancelled = finalized.pop()
        reason = {"reason": "the customer changed plans"}
        assert api.post(f"/vip-bundles/{cancelled}/cancel", json=reason).status_code == 202
        settle(api, cancelled, until=("cancelled",))
        stuck = parked(api, sim)["vip_bundle_id"]
    finally:
        sim.clear_faults()
        sim.close()
    return {"finalized": finalized[0], "failed": failed, "cancelled": cancelled, "parked": stuck}


def test_the_console_shows_the_fleet_as_metrics_count_it_and_refreshes_itself(
    api: httpx.Client,
    fleet: dict[str, str],
    browser: str,
    tmp_path: Path,
):
    # Virtual time: the page's refresh timer fires (and its fetches run) before the dump.
    html = run_chromium(
        browser, f"{api.base_url}/", tmp_path, "--virtual-time-budget=12000", "--dump-dom"
    )
    after = gauge(api)
    dom = parse(html)

    # The diagram: every status with its number of bundles, the same as /metrics says.
    counts = {e.attrs["id"].removeprefix("count-"): int(e.text) for e in dom.all("text", "count")}
    assert counts == after
    assert set(counts) == {s.value for s in Status}
    assert counts["finalized"] >= 2 and counts["failed"] >= 1
    assert counts["compensation_failed"] >= 1
    assert int(dom.by_id("total").text) == sum(after.values())

    # Transitions taken lately are drawn as taken, with their numbers.
    moves = {e.attrs["data-move"]: int(e.text) for e in dom.all("tspan", "moves")}
    assert moves["return_booked>finalized"] >= 2
    assert moves["rolling_back>compensation_failed"] >= 1
    taken = {(e.attrs["data-from"], e.attrs["data-to"]) for e in dom.all("g", "taken")}
    assert ("return_booked", "finalized") in taken

    # The refresh ran in place (no reload): the JSON endpoint answered and numbers were set.
    assert int(dom.by_id("updated-at").attrs["data-refreshes"]) >= 1

    # Parked and recent failed bundles, each linked to its page, the parked one with its error.
    parked_rows = {r.attrs["data-id"]: r for r in dom.all("tr") if r.attrs.get("data-id")}
    assert fleet["parked"] in parked_rows and fleet["failed"] in parked_rows
    links = {a.attrs["href"] for a in dom.all("a")}
    assert f"vip-bundles/{fleet['parked']}" in links
    assert f"vip-bundles/{fleet['failed']}" in links
    assert "400" in parked_rows[fleet["parked"]].text
    assert dom.by_id("flower-link").attrs["href"] == "http://127.0.0.1:5555"
    assert dom.by_id("metrics-link").attrs["href"] == "metrics"

    # Self-contained: the one inline script, nothing loaded from anywhere.
    assert [s for s in dom.all("script") if s.attrs.get("src")] == []
    assert not [e for e in dom.elements if e.tag in ("link", "img", "iframe")]

    shot = tmp_path / "dashboard.png"
    run_chromium(
        browser,
        f"{api.base_url}/",
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1300,1500",
        "--hide-scrollbars",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("DASHBOARD_SCREENSHOT"):  # docs/dashboard.png is made so
        shutil.copy(shot, target)


def test_the_console_search_box_finds_a_bundle(
    api: httpx.Client,
    fleet: dict[str, str],
    browser: str,
    tmp_path: Path,
):
    url = f"{api.base_url}/?q={fleet['failed']}"
    dom = parse(run_chromium(browser, url, tmp_path, "--dump-dom"))
    rows = [r.attrs["data-id"] for r in dom.all("tr", "found")]
    assert rows == [fleet["failed"]]


def test_the_console_json_has_every_number_the_page_shows(api: httpx.Client, fleet):
    data = api.get("/dashboard.json").json()
    assert set(data["counts"]) == {s.value for s in Status}
    assert data["total"] == sum(data["counts"].values())
    assert fleet["parked"] in [r["vip_bundle_id"] for r in data["parked"]]
    assert data["window_minutes"] == 15


# --- search as JSON -------------------------------------------------------------------------------


def test_search_finds_a_bundle_by_id_booking_email_and_correlation_id(
    api: httpx.Client, saga: Saga
):
    email = f"Ann.{uuid.uuid4().hex[:8]}@Example.com"
    correlation = f"order-{uuid.uuid4()}"
    bundle_id = book(api, request(customer_email=email), **{"Correlation-ID": correlation})
    bundle = api.get(f"/vip-bundles/{bundle_id}").json()

    for text in (bundle_id, bundle["booking_id"], email.upper(), correlation):
        r = api.get("/vip-bundles", params={"q": text})
        assert r.status_code == 200
        page = r.json()
        assert page["q"] == text and page["total"] == 1
        (item,) = page["items"]
        assert item["vip_bundle_id"] == bundle_id
        assert set(item) >= {"vip_bundle_id", "booking_id", "status", "customer_email"}

    assert api.get("/vip-bundles", params={"q": "nobody@example.com"}).json()["total"] == 0
    r = api.get("/vip-bundles")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "status"
    # The status page keeps its shape.
    page = api.get("/vip-bundles", params={"status": "finalized", "limit": 1}).json()
    assert set(page) == {"status", "total", "offset", "limit", "items"}


# --- resume ---------------------------------------------------------------------------------------


def test_resume_takes_a_parked_bundle_up_now_and_records_who_asked(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    bundle = parked(api, sim)  # its backoff is far from over: only the resume takes it up
    r = api.post(f"/vip-bundles/{bundle['vip_bundle_id']}/resume")

    assert r.status_code == 202
    assert r.json() == {"vip_bundle_id": bundle["vip_bundle_id"], "status": "rolling_back"}
    done = settle(api, bundle["vip_bundle_id"], until=("failed",))
    resumed = [h for h in done["history"] if h["event"] == "RollbackResumed"]
    assert [h["detail"] for h in resumed] == ["by=local"]
    assert done["compensations"]["pending"] == []


def test_resume_of_a_bundle_in_flight_sends_its_next_step_again_without_doubling_it(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    sim.set_latency(300)
    body = request()
    bundle_id = book(api, body)
    r = api.post(f"/vip-bundles/{bundle_id}/resume")
    sim.set_latency(0)

    assert r.status_code == 202
    assert r.json()["status"] in ("initialized", "booking_made", "inbound_booked")
    done = settle(api, bundle_id)
    assert done["status"] == "finalized"
    assert [h["detail"] for h in done["history"] if h["event"] == "BundleResumed"] == ["by=local"]
    # Steps are idempotent: one set of tickets per leg at the airline.
    assert len(sim.flight_tickets(reference_id=bundle_id)) == 2 * len(body["passengers"])


def test_operator_doors_need_their_scopes_and_a_resume_names_the_key(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    bundle_id = parked(api, sim)["vip_bundle_id"]
    viewer_key, ops_key = "k-viewer-" + "4" * 32, "k-ops-" + "5" * 32
    keys = f"{viewer_key}:read,{ops_key}:read+operate"

    async def calls() -> list[httpx.Response]:
        # In process, as a loopback client, behind the door's access middleware.
        transport = httpx.ASGITransport(app=create_app(keys), client=("127.0.0.1", 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            viewer = {"Authorization": f"Bearer {viewer_key}"}
            ops = {"Authorization": f"Bearer {ops_key}"}
            resume = f"/vip-bundles/{bundle_id}/resume"
            return [
                await http.get("/"),
                await http.get("/", headers=viewer),
                await http.get("/metrics", headers=viewer),
                await http.get("/vip-bundles", params={"q": bundle_id}, headers=viewer),
                await http.post(resume, headers=viewer),
                await http.post(resume, headers=ops),
            ]

    anonymous, page, scrape, search, refused, resumed = asyncio.run(calls())
    assert anonymous.status_code == 401
    assert (page.status_code, scrape.status_code, search.status_code) == (200, 200, 200)
    assert refused.status_code == 403
    assert resumed.status_code == 202
    done = settle(api, bundle_id, until=("failed",))
    (entry,) = [h for h in done["history"] if h["event"] == "RollbackResumed"]
    assert entry["detail"] == f"by={ApiKey.of(ops_key, frozenset()).name}"


def test_the_reconciler_takes_bundles_up_through_the_same_function(
    api: httpx.Client, sim: SimulatorClient, saga: Saga
):
    stuck = parked(api, sim)["vip_bundle_id"]
    sim.set_latency(1000)  # still in flight when the reconciler's process has started
    body = request()
    in_flight = book(api, body)
    # One reconciler pass, as beat's task runs it, told that nothing is recent enough to wait.
    env = local_stack.celery_env(STALE_AFTER_S="0", PARKED_RETRY_BASE_S="0")
    run = subprocess.run(
        [sys.executable, "-c", "from tasks.reconcile import reconcile; print(reconcile())"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    sim.set_latency(0)
    assert run.returncode == 0, run.stderr
    counts = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert counts["parked_retried"] >= 1 and counts["resumed"] >= 1, (counts, run.stderr[-3000:])

    retried = settle(api, stuck, until=("failed",))
    (entry,) = [h for h in retried["history"] if h["event"] == "RollbackResumed"]
    assert entry["detail"] is None  # the reconciler, not an operator
    done = settle(api, in_flight)
    assert done["status"] == "finalized"
    assert not [h for h in done["history"] if h["event"] == "BundleResumed"]
    assert len(sim.flight_tickets(reference_id=in_flight)) == 2 * len(body["passengers"])


def test_resume_refuses_final_bundles_and_does_not_know_unknown_ones(
    api: httpx.Client, fleet: dict[str, str]
):
    r = api.post(f"/vip-bundles/{fleet['finalized']}/resume")
    assert r.status_code == 409
    assert r.json()["errors"][0]["field"] == "status"
    r = api.post(f"/vip-bundles/{uuid.uuid4()}/resume")
    assert r.status_code == 404
    assert r.json()["errors"][0]["field"] == "vip_bundle_id"


def test_cli_resume_and_stats(api: httpx.Client, sim: SimulatorClient, saga: Saga):
    bundle = parked(api, sim)

    done = vip_bundles("resume", bundle["vip_bundle_id"])
    assert done.returncode == 0, done.stderr
    assert "rolling_back" in done.stdout
    settled = settle(api, bundle["vip_bundle_id"], until=("failed",))
    (resumed,) = [h for h in settled["history"] if h["event"] == "RollbackResumed"]
    assert resumed["detail"] == f"by=cli@{socket.gethostname()}"

    again = vip_bundles("resume", bundle["vip_bundle_id"])
    assert again.returncode == 1 and "failed" in again.stdout

    stats = vip_bundles("stats")
    assert stats.returncode == 0, stats.stderr
    for status in Status:
        assert status.value in stats.stdout


# --- /metrics -------------------------------------------------------------------------------------


def test_metrics_count_bundles_transitions_steps_and_partner_calls(
    api: httpx.Client, fleet: dict[str, str]
):
    statuses = gauge(api)
    for status in Status:
        page = api.get("/vip-bundles", params={"status": status.value, "limit": 1}).json()
        assert statuses[status.value] == page["total"]

    # Workers send their sums every few seconds: wait for the fleet's to arrive.
    deadline = time.monotonic() + 15
    while True:
        m = metrics(api)
        calls = {
            (dict(k)["partner"], dict(k)["outcome"]): v
            for k, v in m["vip_bundles_partner_calls_total"].items()
        }
        steps = {dict(k)["step"] for k in m.get("vip_bundles_step_duration_seconds_count", {})}
        if calls[("flights", "ok")] and "book_return_flight" in steps:
            break
        assert time.monotonic() < deadline, (calls, steps)
        time.sleep(0.5)
    assert calls[("shows", "ok")] >= 3
    assert calls[("payments", "refused")] >= 1  # the parked bundle's refunds (400)
    assert {"book_show_tickets", "book_inbound_flight", "refund_ticket"} <= steps
    transitions = {dict(k)["event"]: v for k, v in m["vip_bundles_transitions_total"].items()}
    assert transitions["VipBundleFinalized_v1"] >= 1
    assert transitions["CompensationFailed_v1"] >= 1
    kinds = {dict(k)["kind"]: v for k, v in m["vip_bundles_compensations_total"].items()}
    assert kinds["cancel_flight_tickets"] >= 1 and kinds["refund_ticket"] >= 1

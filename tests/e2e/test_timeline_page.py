"""The bundle timeline page, rendered by a real headless Chromium from the real HTTP door."""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from partner_simulator.server import SimulatorClient
from process_manager import saga as saga_rules
from process_manager import versions
from process_manager.bundle import Status
from tests.e2e.api_server import api_server
from tests.e2e.browser import chromium_binary, parse, run_chromium
from tests.helpers import Saga, request
from vip_bundles import local_stack

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ROLLED_BACK_PATH = [
    ("initialized", "booking_made"),
    ("booking_made", "inbound_booked"),
    ("inbound_booked", "rolling_back"),
    ("rolling_back", "rolling_back"),
    ("rolling_back", "failed"),
]
HOSTILE_NAME = "<script>document.title='pwned'</script> Ann & \"Bob\""


@pytest.fixture(scope="module")
def api(worker: local_stack.Worker) -> Iterator[httpx.Client]:
    with api_server() as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_binary()


def settle(api: httpx.Client, bundle_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bundle = api.get(f"/vip-bundles/{bundle_id}").json()
        if bundle.get("status") in ("finalized", "failed", "compensation_failed"):
            return bundle
        time.sleep(0.1)
    raise AssertionError(f"bundle {bundle_id} did not settle")


def test_page_of_a_rolled_back_bundle_in_chromium(
    api: httpx.Client, sim: SimulatorClient, saga: Saga, chromium: str, tmp_path: Path
):
    body = request(passengers=[HOSTILE_NAME, "Bob Lee"])
    sim.set_flight_seats(body["return_flight_id"], 0)
    bundle_id = api.post("/book-vip-bundle", json=body).json()["vip_bundle_id"]
    bundle = settle(api, bundle_id)
    assert bundle["status"] == "failed"
    url = f"{api.base_url}/vip-bundles/{bundle_id}"

    dom = parse(run_chromium(chromium, url, tmp_path, "--dump-dom"))

    # The diagram: every status a node, every transition an edge, this bundle's path highlighted.
    nodes = {n.attrs["data-status"]: n.classes for n in dom.all("g", "node")}
    assert set(nodes) == {s.value for s in Status}
    visited = {status for status, classes in nodes.items() if "visited" in classes}
    assert visited == {"initialized", "booking_made", "inbound_booked", "rolling_back", "failed"}
    assert [s for s, classes in nodes.items() if "current" in classes] == ["failed"]
    edges = {(e.attrs["data-from"], e.attrs["data-to"]): e.classes for e in dom.all("g", "edge")}
    assert set(edges) == {(a.value, b.value) for (a, _), b in saga_rules.TRANSITIONS.items()}
    assert {pair for pair, classes in edges.items() if "taken" in classes} == set(ROLLED_BACK_PATH)

    # The timeline: one row per transition, in order, with timings.
    rows = dom.all("tr", "step")
    assert [(r.attrs["data-event"], r.attrs["data-to"]) for r in rows] == [
        (h["event"], h["to"]) for h in bundle["history"]
    ]
    events = [r.attrs["data-event"] for r in rows]
    assert events[:4] == [
        "VipBundleInitialized_v1",
        "BookingMade_v1",
        "FlightBooked_v1",
        "FlightBookingFailed_v1",
    ]
    assert sorted(events[4:-1]) == [
        "FlightTicketsCancelled_v1",
        "TicketRefunded_v1",
        "TicketRefunded_v1",
    ]
    assert events[-1] == "VipBundleFailed_v1"
    assert "failure" in rows[3].classes
    assert "+ms since start" in dom.by_id("timeline").text

    # Why it failed, and what was undone.
    assert bundle["failure"]["reason"] in dom.by_id("failure-reason").text
    assert "book_return_flight" in dom.by_id("failure").text
    assert bundle["failure"]["reason"] in dom.by_id("headline").text
    refunds = {li.attrs["data-ticket"]: li.text for li in dom.all("li", "refund")}
    assert set(refunds) == set(bundle["ticket_ids"])
    assert all("refunded" in text for text in refunds.values())
    (cancelled,) = dom.all("li", "cancellation")
    assert cancelled.attrs["data-leg"] == "inbound" and "cancelled" in cancelled.text

    # Escaped output: a hostile passenger name is text, never markup.
    assert dom.all("script") == []
    assert HOSTILE_NAME in dom.by_id("passengers").text
    assert "pwned" not in dom.all("title")[0].text

    # Self-contained: nothing is loaded from anywhere.
    assert not [e for e in dom.elements if e.attrs.get("src") or e.tag == "link"]

    shot = tmp_path / "page.png"
    run_chromium(chromium, url, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_of_a_finalized_bundle_highlights_the_forward_path(
    api: httpx.Client, saga: Saga, chromium: str, tmp_path: Path
):
    bundle_id = api.post("/book-vip-bundle", json=request()).json()["vip_bundle_id"]
    assert settle(api, bundle_id)["status"] == "finalized"

    dom = parse(
        run_chromium(chromium, f"{api.base_url}/vip-bundles/{bundle_id}", tmp_path, "--dump-dom")
    )

    nodes = {n.attrs["data-status"]: n.classes for n in dom.all("g", "node")}
    forward = ["initialized", "booking_made", "inbound_booked", "return_booked", "finalized"]
    assert {s for s, c in nodes.items() if "visited" in c} == set(forward)
    assert [s for s, c in nodes.items() if "current" in c] == ["finalized"]
    taken = {(e.attrs["data-from"], e.attrs["data-to"]) for e in dom.all("g", "taken")}
    assert taken == set(pairwise(forward))
    assert "nothing had to be undone" in dom.by_id("compensations").text
    assert len(dom.all("tr", "step")) == 5
    # Which release created and last moved it (process_manager/versions.py).
    assert dom.by_id("created-by").text.strip() == versions.RELEASE
    assert dom.by_id("moved-by").text.strip() == versions.RELEASE


def test_page_of_a_cancelled_bundle_shows_the_cancellation_path_and_reason(
    api: httpx.Client, saga: Saga, chromium: str, tmp_path: Path
):
    bundle_id = api.post("/book-vip-bundle", json=request()).json()["vip_bundle_id"]
    assert settle(api, bundle_id)["status"] == "finalized"
    r = api.post(f"/vip-bundles/{bundle_id}/cancel", json={"reason": "<b>storm</b> warning"})
    assert r.status_code == 202
    saga.wait(bundle_id)

    dom = parse(
        run_chromium(chromium, f"{api.base_url}/vip-bundles/{bundle_id}", tmp_path, "--dump-dom")
    )

    nodes = {n.attrs["data-status"]: n.classes for n in dom.all("g", "node")}
    assert [s for s, c in nodes.items() if "current" in c] == ["cancelled"]
    taken = {(e.attrs["data-from"], e.attrs["data-to"]) for e in dom.all("g", "taken")}
    forward = ["initialized", "booking_made", "inbound_booked", "return_booked", "finalized"]
    assert taken == {
        *pairwise(forward),
        ("finalized", "cancelling"),
        ("cancelling", "cancelling"),
        ("cancelling", "cancelled"),
    }
    assert dom.by_id("cancellation-reason").text.strip() == "<b>storm</b> warning"  # escaped
    assert "storm" in dom.by_id("headline").text
    rows = dom.all("tr", "step")
    assert rows[5].attrs["data-event"] == "VipBundleCancellationRequested_v1"
    assert "cancel" in rows[5].classes
    assert rows[-1].attrs["data-event"] == "VipBundleCancelled_v1"
    assert api.get(f"/vip-bundles/{bundle_id}").json()["cancellation"]["from_status"] == (
        "finalized"
    )


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("application/json", False),
        ("application/json, text/html;q=0.5", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_content_negotiation_serves_html_to_browsers_and_json_to_the_rest(
    api: httpx.Client, saga: Saga, accept: str | None, html: bool
):
    bundle_id = api.post("/book-vip-bundle", json=request()).json()["vip_bundle_id"]
    headers = {"Accept": accept} if accept else {}
    client = httpx.Client(base_url=str(api.base_url), headers={})  # no default Accept
    with client:
        if accept is None:
            client.headers.pop("Accept", None)
        r = client.get(f"/vip-bundles/{bundle_id}", headers=headers)

    assert r.status_code == 200
    assert r.headers["Vary"] == "Accept"
    if html:
        assert r.headers["Content-Type"].startswith("text/html")
        assert bundle_id in r.text
    else:
        assert r.json()["vip_bundle_id"] == bundle_id


def test_browsers_get_an_html_404_for_an_unknown_bundle(api: httpx.Client):
    r = api.get("/vip-bundles/no-such-bundle", headers={"Accept": BROWSER_ACCEPT})

    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/html")
    assert "no-such-bundle" in r.text

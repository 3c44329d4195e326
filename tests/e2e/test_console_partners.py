"""The partners' back-pressure at the operator's doors: the console's "Partners" table (its
page and `/dashboard.json`), `/metrics` and `vip-bundles stats`, served from the same Redis the
workers share (a Retry-After and a waiting undo set as a worker would leave them)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tasks.celery_app import deferred_steps, partner_gate
from tests.e2e.api_server import api_server
from tests.e2e.test_cli import vip_bundles
from tests.e2e.test_console import metrics

PARTNER = "receipts-api"  # not called by these tests; its state is put back afterwards


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with api_server() as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


@pytest.fixture
def receipts_busy() -> Iterator[str]:
    """Receipts answered 429 with `Retry-After: 600`, and one undo waits on them; the bundle
    id. The partner's hash is restored after (other tests of the session share it)."""
    gate, deferred = partner_gate(), deferred_steps()
    key, waiting = gate.key(PARTNER), f"console-test-{uuid.uuid4()}"
    before = gate.redis.dump(key)
    gate.report(PARTNER, "throttled", retry_after_s=600)
    deferred.defer(waiting, PARTNER, undo=True, wait_s=3600)  # not due: no releaser takes it
    try:
        yield waiting
    finally:
        gate.redis.zrem(deferred.key(PARTNER, "undo"), waiting)
        gate.redis.delete(key)
        if before is not None:
            gate.redis.restore(key, 0, before)


def test_the_console_shows_each_partners_back_pressure(api: httpx.Client, receipts_busy: str):
    data = api.get("/dashboard.json").json()
    rows = {p["partner"]: p for p in data["partners"]}
    assert list(rows) == ["shows", "flights", "payments", "receipts"]
    receipts = rows["receipts"]
    assert receipts["busy"] and receipts["deferred_undo"] >= 1
    assert 590 < receipts["retry_after_s"] <= 600 and receipts["retry_after_text"].startswith(
        "9 min"
    )
    for field in ("circuit", "throttled", "not_called", "waits", "wait_s", "deferred_forward"):
        assert field in receipts

    page = api.get("/").text
    assert 'id="partners-list"' in page and 'data-partner="receipts" class="busy"' in page

    m = metrics(api)  # /metrics says the same
    left = {dict(k)["partner"]: v for k, v in m["vip_bundles_partner_retry_after_seconds"].items()}
    assert 590 < left["receipts"] <= 600
    waiting = {
        (dict(k)["partner"], dict(k)["kind"]): v for k, v in m["vip_bundles_deferred_steps"].items()
    }
    assert waiting[("receipts", "undo")] == receipts["deferred_undo"]


def test_cli_stats_shows_each_partners_back_pressure(receipts_busy: str):
    stats = vip_bundles("stats")
    assert stats.returncode == 0, stats.stderr
    assert "partners" in stats.stdout and "Retry-After left" in stats.stdout
    (row,) = [line for line in stats.stdout.splitlines() if " receipts " in line]
    assert "9 min" in row  # the Retry-After left
    for partner in ("shows", "flights", "payments"):
        assert f" {partner} " in stats.stdout

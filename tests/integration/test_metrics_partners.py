"""Partners' back-pressure on /metrics, the console's data and `vip-bundles stats`' table,
against a real Redis: the fleet's gate hashes and delayed queues as the workers leave them."""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis import Redis
from rich.console import Console

from adapters.deferred import DeferredSteps
from adapters.metrics import read_partners
from adapters.partner_gate import BreakerPolicy, PartnerGate
from adapters.store import BundleStore
from tests.integration.test_metrics import meter_for, scrape
from vip_bundles.partners_view import partners_table, partners_view


def by(samples: dict[tuple[tuple[str, str], ...], float], *labels: str) -> dict[Any, float]:
    """Samples keyed by their label values (one label: the value alone)."""
    out = {}
    for key, value in samples.items():
        values = tuple(dict(key)[label] for label in labels)
        out[values[0] if len(values) == 1 else values] = value
    return out


@pytest.fixture
def busy_fleet(store: BundleStore) -> BundleStore:
    """Flights open, receipts half-open (probing), payments under a 20 s Retry-After, shows
    fine; steps waiting on flights and payments; the workers' sums of 429s and waits."""
    gate = PartnerGate(store.redis, store.prefix, breaker=BreakerPolicy(failures=2, open_s=30))
    gate.report("transportation-api", "fail")
    gate.report("transportation-api", "fail")  # the second in a row opens it
    gate.report("payments-api", "throttled", retry_after_s=20)
    quick = PartnerGate(store.redis, store.prefix, breaker=BreakerPolicy(failures=1, open_s=0.05))
    quick.report("receipts-api", "fail")
    time.sleep(0.1)
    assert quick.acquire("receipts-api", undo=True).reason == "go"  # the probe: half-open

    deferred = DeferredSteps(store.redis, store.prefix)
    deferred.defer("b-refund", "payments-api", undo=True, wait_s=20)
    deferred.defer("b-flight-1", "transportation-api", undo=False, wait_s=5)
    deferred.defer("b-flight-2", "transportation-api", undo=False, wait_s=5)

    meter = meter_for(store)
    for _ in range(3):
        meter.partner_call("payments", "throttled")
    meter.partner_call("flights", "deferred")
    meter.partner_wait("payments", "retry_after", 19.5)
    meter.partner_wait("flights", "open", 0.25)
    meter.partner_wait("flights", "open", 0.5)
    meter.flush()
    return store


def test_metrics_serve_each_partners_circuit_retry_after_deferred_steps_and_waits(
    busy_fleet: BundleStore,
):
    m = scrape(busy_fleet)
    partners = {"shows", "flights", "payments", "receipts"}

    circuit = by(m["vip_bundles_partner_circuit_state"], "partner")
    assert circuit == {"shows": 0, "flights": 2, "payments": 0, "receipts": 1}

    retry_after = by(m["vip_bundles_partner_retry_after_seconds"], "partner")
    assert set(retry_after) == partners
    assert 15 < retry_after["payments"] <= 20  # seconds left, on the Redis server's clock
    assert retry_after["shows"] == retry_after["flights"] == retry_after["receipts"] == 0

    deferred = by(m["vip_bundles_deferred_steps"], "partner", "kind")
    assert {k: v for k, v in deferred.items() if v} == {
        ("payments", "undo"): 1,
        ("flights", "forward"): 2,
    }
    assert len(deferred) == 8  # every partner and kind, at 0 until something waits

    waits = by(m["vip_bundles_partner_waits_total"], "partner", "reason")
    assert {k: v for k, v in waits.items() if v} == {
        ("payments", "retry_after"): 1,
        ("flights", "open"): 2,
    }
    assert {r for _, r in waits} == {"retry_after", "open", "half_open", "quota"}
    # Seconds are added as floats (HINCRBYFLOAT): fractions of a second are not lost.
    wait_s = by(m["vip_bundles_partner_wait_seconds_total"], "partner")
    assert wait_s["payments"] == pytest.approx(19.5) and wait_s["flights"] == pytest.approx(0.75)

    calls = by(m["vip_bundles_partner_calls_total"], "partner", "outcome")
    assert calls[("payments", "throttled")] == 3 and calls[("flights", "deferred")] == 1


class CountingRedis(Redis):
    """A real client that counts what it sends: single commands and pipelines."""

    commands = 0
    pipelines = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.commands += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        CountingRedis.pipelines += 1
        return super().pipeline(transaction, shard_hint)


def test_a_scrape_is_still_one_round_trip(busy_fleet: BundleStore, redis_url: str):
    client = CountingRedis.from_url(redis_url)
    try:
        m = scrape(BundleStore(client, prefix=busy_fleet.prefix))
    finally:
        client.close()
    assert CountingRedis.pipelines == 1 and CountingRedis.commands == 0
    assert by(m["vip_bundles_partner_circuit_state"], "partner")["flights"] == 2


def test_the_console_and_stats_show_the_same_partners(busy_fleet: BundleStore):
    rows = {r["partner"]: r for r in partners_view(busy_fleet)}
    assert list(rows) == ["shows", "flights", "payments", "receipts"]  # the contract's order
    flights, payments = rows["flights"], rows["payments"]
    assert flights["circuit"] == "open" and flights["circuit_text"].startswith("open for ")
    assert flights["deferred_forward"] == 2 and flights["not_called"] == 1
    assert flights["waits"] == 2 and flights["waits_by_reason"]["open"] == 2
    assert payments["throttled"] == 3 and payments["deferred_undo"] == 1
    assert 15 < payments["retry_after_s"] <= 20 and payments["retry_after_text"].endswith(" s")
    assert rows["receipts"]["circuit"] == "half_open"
    assert [r["busy"] for r in rows.values()] == [False, True, True, True]
    assert [p.partner for p in read_partners(busy_fleet)] == list(rows)

    console = Console(width=200, record=True)
    console.print(partners_table(busy_fleet))
    text = console.export_text()
    for line, expected in (
        ("shows", ["closed", "-"]),
        ("flights", ["open for", "2", "1"]),
        ("payments", ["closed", "1", "3", "19.5 s in all"]),
        ("receipts", ["half-open"]),
    ):
        (row,) = [r for r in text.splitlines() if f" {line} " in r]
        for cell in expected:
            assert cell in row, (cell, row)

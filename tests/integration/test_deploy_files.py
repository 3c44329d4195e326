"""deploy/: the Grafana dashboard and the Prometheus alert rules use only what /metrics serves,
and the rules are valid (promtool, when installed: `apt-get install -y prometheus`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from redis import Redis

from adapters.metrics import Meter, RedisCollector
from adapters.metrics_memory import MemoryCollector
from adapters.store import BundleStore
from process_manager import saga
from tests.factories import fresh_bundle
from tests.needs import missing

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bvip_bundles_[a-z_]+\b")


@pytest.fixture
def served(redis_url: str) -> Iterator[set[str]]:
    """Every sample name /metrics serves once each kind of observation has been made."""
    prefix = f"vip-bundles-deploy-test-{uuid.uuid4().hex[:8]}:"
    client = Redis.from_url(redis_url)
    store = BundleStore(client, prefix=prefix)
    fresh = fresh_bundle()
    store.create(fresh, saga.initialized(fresh))
    meter = Meter(flush_every_s=3600)
    meter.configure(lambda: (client, prefix))
    meter.step("book_show_tickets", 0.1)
    meter.partner_call("shows", "ok")
    meter.flush()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(store))
    registry.register(MemoryCollector(store, archiving=False))
    text = generate_latest(registry).decode()
    yield {line.split("{")[0].split()[0] for line in text.splitlines() if not line.startswith("#")}
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def exprs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def test_the_grafana_dashboard_parses_and_uses_only_served_metrics(served: set[str]):
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    queries = list(exprs(dashboard["panels"]))
    assert len(queries) >= 8
    used = {name for q in queries for name in METRIC.findall(q)}
    assert used - served == set()
    # Every metric family the brief names has a panel.
    for family in (
        "vip_bundles_bundles",
        "vip_bundles_transitions_total",
        "vip_bundles_step_duration_seconds_bucket",
        "vip_bundles_partner_calls_total",
        "vip_bundles_compensations_total",
        "vip_bundles_oldest_in_flight_seconds",
        "vip_bundles_partner_circuit_state",
        "vip_bundles_partner_retry_after_seconds",
        "vip_bundles_deferred_steps",
        "vip_bundles_partner_waits_total",
    ):
        assert family in used


def test_the_alert_rules_use_only_served_metrics(served: set[str]):
    used = set(METRIC.findall((DEPLOY / "prometheus-alerts.yml").read_text()))
    assert used
    assert used - served == set()


@pytest.mark.parametrize("command", ["check", "test"])
def test_promtool_accepts_the_rules_and_their_unit_tests(command: str):
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("no promtool on PATH (apt-get install -y prometheus brings it)")
    target = "prometheus-alerts.yml" if command == "check" else "prometheus-alerts.test.yml"
    done = subprocess.run(
        [promtool, command, "rules", target],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout

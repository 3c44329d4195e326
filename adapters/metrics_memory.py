"""Redis memory as Prometheus gauges (`GET /metrics`): used, maxmemory, and an estimate of what
settled bundles hold (sampled MEMORY USAGE, adapters/store_retention.py), so an alert fires
before Redis reaches maxmemory (deploy/prometheus-alerts.yml, VipBundlesRedisMemoryHigh)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from adapters.store import BundleStore


class MemoryCollector:
    def __init__(self, store: BundleStore, archiving: bool) -> None:
        self.store = store
        self.archiving = archiving

    def collect(self) -> Iterator[Metric]:
        m = self.store.memory()
        for name, help_text, value in (
            ("vip_bundles_redis_used_memory_bytes", "Redis used_memory", m.used),
            ("vip_bundles_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)", m.maxmemory),
            (
                "vip_bundles_settled_memory_bytes",
                "Estimated Redis memory held by settled bundles (sampled MEMORY USAGE)",
                m.settled_bytes,
            ),
            (
                "vip_bundles_archiving",
                "1 when settled bundles move to the archive (ARCHIVE_URL set), else 0",
                int(self.archiving),
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], value)
            yield gauge

"""What the console and `vip-bundles stats` say about Redis memory and retention."""

from __future__ import annotations

from typing import Any

from adapters.settings import get_settings
from adapters.store import BundleStore


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} GiB"


def memory_view(store: BundleStore) -> dict[str, Any]:
    """Redis memory (used, maxmemory), what settled bundles hold of it, and whether they leave
    Redis (ARCHIVE_URL), as numbers and as one sentence each."""
    s, m = get_settings(), store.memory()
    limit = size(m.maxmemory) if m.maxmemory else "no maxmemory set"
    retention = (
        f"settled bundles move to the archive {s.retention_s / 86400:g} days after they settle"
        if s.archive_url is not None
        else "no ARCHIVE_URL: settled bundles never leave Redis"
    )
    return {
        **m.as_dict(),
        "archiving": s.archive_url is not None,
        "retention_s": s.retention_s,
        "lines": [
            f"Redis memory: {size(m.used)} used of {limit}",
            f"settled bundles in Redis: {m.settled_bundles:,}, about {size(m.settled_bytes)} "
            f"({size(m.per_settled_bundle)} each, {m.sampled} sampled)",
            retention,
        ],
    }

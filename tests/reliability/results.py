"""Figures of the last reliability run, kept as JSON for `python -m tests.reliability.report`.

Each scenario replaces its own entry, so re-running one scenario updates only its figures.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(
    os.environ.get("RELIABILITY_RESULTS", ROOT / "build" / "reliability" / "results.json")
)


def load(path: Path = RESULTS) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return data


def record(key: str, **entry: Any) -> None:
    """Store one scenario's figures under `key` (e.g. "1-kill-redelivery")."""
    data = load()
    data[key] = {
        **entry,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(RESULTS)

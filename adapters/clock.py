"""The one clock the retention code reads (archiving decides "settled long enough ago" by it).

`now()` is wall-clock time, shifted by `CLOCK_OFFSET_S` (seconds, default 0) when set: a
benchmark or a test drives retention over simulated days by moving the clock forward in the
process that archives, without sleeping. Nothing else in the saga reads this offset.
"""

from __future__ import annotations

import os
import time


def now() -> float:
    """Epoch seconds, as retention sees them."""
    return time.time() + float(os.environ.get("CLOCK_OFFSET_S", "0") or 0)

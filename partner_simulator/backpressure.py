"""Back-pressure: per-prefix call quotas (`PUT /_sim/quota`) and the `Retry-After` header.

Each quota admits at most `per_second` calls under its path prefix in any sliding one-second
window of the simulator's monotonic clock. Sliding rather than aligned to whole seconds because
a fixed window lets a client send 2 x N calls across a second boundary, which a real partner's
limiter would not allow; a client that keeps within a sliding window keeps within any.

Only admitted calls count: a 429 the quota answered consumes nothing, so a client that backs
off gets its share back a second later however hard others hammered meanwhile. A call under
several quota prefixes must be admitted by every one of them, and then counts in each.

Like the rest of the state, nothing here awaits: the check-and-count is atomic on the event
loop. Each admitted call is appended once and popped once, so a check is O(1) amortised.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

WINDOW_S = 1.0
# What the contract says a quota-refused call carries: `Retry-After: 1`.
QUOTA_RETRY_AFTER_S = 1


def whole_if_integral(seconds: float) -> float | int:
    """2.0 -> 2, so that a whole Retry-After is written as delta-seconds, as RFC 9110 has it."""
    return int(seconds) if float(seconds).is_integer() else seconds


def retry_after_header(seconds: float, http_date: bool = False) -> str:
    """A `Retry-After` value: delta-seconds (a fraction only when asked for one), or the
    HTTP-date that many seconds from now, rounded up so a client honouring it waits no less."""
    if http_date:
        return formatdate(math.ceil(time.time() + seconds), usegmt=True)
    return str(whole_if_integral(seconds))


@dataclass(slots=True)
class Quota:
    path_prefix: str
    per_second: int
    # Monotonic times of the calls admitted within the last WINDOW_S, oldest first.
    admitted: deque[float] = field(default_factory=deque)

    def has_room(self, now: float) -> bool:
        admitted = self.admitted
        horizon = now - WINDOW_S
        while admitted and admitted[0] <= horizon:
            admitted.popleft()
        return len(admitted) < self.per_second

    def describe(self) -> dict[str, Any]:
        return {"path_prefix": self.path_prefix, "per_second": self.per_second}


@dataclass(slots=True)
class Quotas:
    by_prefix: dict[str, Quota] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.by_prefix)

    def set(self, path_prefix: str, per_second: int) -> dict[str, Any]:
        """Set (or, with 0, lift) the quota of a prefix; a new figure starts a fresh window."""
        if per_second == 0:
            self.by_prefix.pop(path_prefix, None)
        else:
            self.by_prefix[path_prefix] = Quota(path_prefix, per_second)
        return {"path_prefix": path_prefix, "per_second": per_second}

    def clear(self) -> None:
        self.by_prefix.clear()

    def describe(self) -> list[dict[str, Any]]:
        return [quota.describe() for quota in self.by_prefix.values()]

    def refusal(self, path: str, now: float) -> Quota | None:
        """The quota refusing a call to `path` at `now`, or None once the call is counted in
        every quota over it."""
        matching = [q for q in self.by_prefix.values() if path.startswith(q.path_prefix)]
        for quota in matching:
            if not quota.has_room(now):
                return quota
        for quota in matching:
            quota.admitted.append(now)
        return None

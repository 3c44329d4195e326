"""One view of each partner for the whole fleet, in Redis: "may I call now, and if not, when?"

Every worker, beat and door process of a deployment shares a partner (shared/partners-api.md,
"Back-pressure"), so what one of them learns holds for all of them. Per partner, one hash holds:
- `not_before`: the latest `Retry-After` any process received (429, or 503 with the header);
- a circuit breaker driven by transient failures (5xx, timeouts, connection errors): `closed`;
  `open` after `failures` in a row, for `open_for` seconds (doubling up to a cap while the
  partner stays down); then `half_open`: one call, the probe, goes through per interval and
  its answer closes the circuit or opens it again;
- `tat`: the fleet's quota from PARTNER_RATE_LIMITS as a GCRA (the "theoretical arrival time"
  of the next call), with no burst: calls are spaced `1 / rate` apart fleet-wide, retries and
  probes included. An undo refused by the quota holds new bookings back until it has had its
  turn (`undo_waits_until`): a customer's refund goes before a new sale.

Both sides are one Lua script each, atomic, on the Redis server's clock (hosts' clocks may
disagree; the server's is one). On the happy path a call costs one script run (`acquire`), and
a forward step's first call none of its own: its start script asks `acquire` (a Lua function)
in the same round trip. `report` runs only when something changed (a failure, a 429, a probe's
answer).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from redis import Redis

log = logging.getLogger(__name__)

# The partners of shared/partners-api.md by path prefix (without slashes), as
# PARTNER_RATE_LIMITS names them.
PARTNER_PREFIXES = ("dead-nation-api", "transportation-api", "payments-api", "receipts-api")
STATES = ("closed", "half_open", "open")

# A Lua function, so that a step's start script (adapters/store_scripts.py) can ask it in the
# same round trip as the start: `acquire(key, calls per second, '1' forward / '0' undo)`.
ACQUIRE_FUNCTION = """
local function acquire(k, rate_arg, forward_arg)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(rate_arg)
local forward = forward_arg == '1'
local h = redis.call('HMGET', k, 'not_before', 'state', 'probe_at', 'tat', 'open_for',
                     'undo_waits_until', 'failures')
local not_before = tonumber(h[1]) or 0
local state = h[2] or 'closed'
if now < not_before then return {'retry_after', tostring(not_before - now), state} end
if state ~= 'closed' then
  local probe_at = tonumber(h[3]) or 0
  if now < probe_at then return {state, tostring(probe_at - now), state} end
end
local tat = now
if rate > 0 then
  local interval = 1 / rate
  if forward then
    local undo_until = tonumber(h[6]) or 0
    if now < undo_until then return {'quota', tostring(undo_until - now), state} end
  end
  tat = math.max(tonumber(h[4]) or 0, now)
  if tat > now then
    if not forward then redis.call('HSET', k, 'undo_waits_until', tat + interval) end
    return {'quota', tostring(tat - now), state}
  end
  redis.call('HSET', k, 'tat', tat + interval)
end
if state ~= 'closed' then
  -- This call is the probe; another may go one interval on if this one never reports.
  redis.call('HSET', k, 'state', 'half_open', 'probe_at', now + (tonumber(h[5]) or 1))
  return {'go', '0', 'half_open', h[7] or '0'}
end
return {'go', '0', state, h[7] or '0'}
end
"""
_ACQUIRE = ACQUIRE_FUNCTION + "return acquire(KEYS[1], ARGV[1], ARGV[2])\n"

_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local k = KEYS[1]
local outcome = ARGV[1]
local retry_after = tonumber(ARGV[2])
local threshold, base, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if retry_after then
  local nb = now + retry_after
  if nb > (tonumber(redis.call('HGET', k, 'not_before')) or 0) then
    redis.call('HSET', k, 'not_before', nb)
  end
  redis.call('HINCRBY', k, 'retry_afters', 1)
end
local state = redis.call('HGET', k, 'state') or 'closed'
if outcome ~= 'fail' then
  -- An answer (a 429 too: the partner is up, only busy) closes the circuit.
  if state ~= 'closed' then
    redis.call('HSET', k, 'state', 'closed', 'open_for', 0, 'opened_at', 0)
  end
  redis.call('HSET', k, 'failures', 0)
  return {'closed', state}
end
local failures = redis.call('HINCRBY', k, 'failures', 1)
if state == 'open' then
  -- A call let through before the circuit opened, failing late: the outage is known already,
  -- and must not lengthen the wait for the first probe (only a probe's failure doubles it).
  return {'open', state}
elseif state == 'half_open' then
  local open_for = (tonumber(redis.call('HGET', k, 'open_for')) or 0) * 2
  open_for = math.min(math.max(open_for, base), cap)
  redis.call('HSET', k, 'state', 'open', 'open_for', open_for, 'probe_at', now + open_for)
  return {'open', state}
elseif failures >= threshold then
  redis.call('HSET', k, 'state', 'open', 'open_for', base, 'probe_at', now + base, 'opened_at', now)
  return {'open', state}
end
return {state, state}
"""


@dataclass(frozen=True)
class Admission:
    """The gate's answer: go now (`wait_s` 0), or not before `wait_s` seconds, and why."""

    wait_s: float
    reason: str  # "go", "retry_after", "open", "half_open" or "quota"
    state: str  # the circuit's state as this call found (or left) it
    failures: int = 0  # transient failures in a row, as the gate knew them

    @property
    def clear(self) -> bool:
        """Nothing to report after a success: the circuit is closed and counts no failure."""
        return self.state == "closed" and self.failures == 0


@dataclass(frozen=True)
class AdmissionAsk:
    """`acquire(key, *args)` of ACQUIRE_FUNCTION: the partner's hash and (rate, '1'|'0')."""

    key: str
    args: tuple[float, str]


def admission_of(reply: list[bytes | str]) -> Admission:
    """An `acquire` reply: (reason, wait, state[, failures])."""
    reason, wait, state = (_text(v) for v in reply[:3])
    failures = int(_text(reply[3])) if len(reply) > 3 else 0
    return Admission(float(wait), reason, state, failures)


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5  # transient failures in a row (fleet-wide) that open the circuit
    open_s: float = 1.0  # first interval between probes
    max_open_s: float = 10.0  # the interval doubles up to this while the partner stays down


class PartnerGate:
    """The fleet's shared view of the partners (one hash per partner in Redis)."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        rate_limits: Mapping[str, float] | None = None,
        breaker: BreakerPolicy | None = None,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self.redis = redis
        self.on_close = on_close  # called with the partner when its circuit closes
        self.prefix = prefix
        self.rate_limits = dict(rate_limits or {})
        self.breaker = breaker or BreakerPolicy()
        self._acquire = redis.register_script(_ACQUIRE)
        self._report = redis.register_script(_REPORT)

    def key(self, partner: str) -> str:
        return f"{self.prefix}partner:{partner}"

    def acquire(self, partner: str, *, undo: bool) -> Admission:
        """May one call to `partner` go now? Takes a slot of the quota when it may."""
        ask = self.ask(partner, undo=undo)
        return admission_of(self._acquire(keys=[ask.key], args=ask.args))

    def ask(self, partner: str, *, undo: bool) -> AdmissionAsk:
        """`acquire`'s question, for a script that asks it with other work (ACQUIRE_FUNCTION)."""
        rate = self.rate_limits.get(partner, 0.0)
        return AdmissionAsk(self.key(partner), (rate, "0" if undo else "1"))

    def report(self, partner: str, outcome: str, retry_after_s: float | None = None) -> str:
        """Record a call's outcome ("ok", "fail" or "throttled") and a `Retry-After`, if any.
        Returns the circuit's state before, when this changed it, else ""."""
        b = self.breaker
        after, before = (
            _text(v)
            for v in self._report(
                keys=[self.key(partner)],
                args=[
                    outcome,
                    "" if retry_after_s is None else retry_after_s,
                    b.failures,
                    b.open_s,
                    b.max_open_s,
                ],
            )
        )
        if after != before:
            log.warning("partner %s: circuit %s -> %s", partner, before, after)
            if after == "closed" and self.on_close is not None:
                self.on_close(partner)
            return before
        return ""

    def state(self, partner: str) -> dict[str, str]:
        """The partner's hash as stored (for the console, stats and /metrics)."""
        return {_text(k): _text(v) for k, v in self.redis.hgetall(self.key(partner)).items()}


def parse_rate_limits(value: str | None) -> dict[str, float]:
    """`PARTNER_RATE_LIMITS`: `<prefix>=<calls per second>[,...]`, e.g.
    `transportation-api=10,payments-api=50`. A malformed entry or an unknown partner prefix is
    refused (ValueError naming it), so a typo cannot silently leave a partner unprotected."""
    limits: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in (value or "").split(","))):
        name, sep, number = (p.strip() for p in entry.partition("="))
        name = name.strip("/")
        if not sep or not name:
            raise ValueError(f"PARTNER_RATE_LIMITS: {entry!r} is not <prefix>=<calls per second>")
        if name not in PARTNER_PREFIXES:
            known = ", ".join(PARTNER_PREFIXES)
            raise ValueError(f"PARTNER_RATE_LIMITS: unknown partner {name!r} (known: {known})")
        try:
            rate = float(number)
        except ValueError:
            rate = math.nan
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"PARTNER_RATE_LIMITS: {entry!r}: calls per second must be > 0")
        if name in limits:
            raise ValueError(f"PARTNER_RATE_LIMITS: {name!r} is given twice")
        limits[name] = rate
    return limits


def parse_retry_after(
    value: str | None, *, default_s: float, max_s: float, now: float | None = None
) -> tuple[float, str | None]:
    """Seconds to wait from a `Retry-After` header (RFC 9110: delta-seconds or an HTTP-date),
    and a note when the value could not be taken as it is (missing, malformed, negative or
    past the cap): then the default, or the cap, is used and the caller logs the note."""
    if value is None or not value.strip():
        return default_s, "no Retry-After"
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return default_s, f"malformed Retry-After {text[:40]!r}"
        if when.tzinfo is None:
            return default_s, f"Retry-After {text[:40]!r} has no zone"
        seconds = max(when.timestamp() - (time.time() if now is None else now), 0.0)
    if seconds > max_s:
        return max_s, f"Retry-After {text[:40]!r} capped at {max_s:g} s"
    return seconds, None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

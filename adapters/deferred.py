"""Steps waiting on a partner: a delayed queue in Redis, shared by the fleet.

A step the partner gate turned away (adapters/partner_gate.py) is not held in a sleeping
thread, nor in a worker's memory as a Celery ETA (lost with a `kill -9` until the broker's
visibility timeout, and not possible on quorum queues without a delayed exchange): its bundle
is put in a sorted set, scored by when its partner is due, and the worker that holds the step
acks it. Every worker runs a releaser (tasks/deferral.py) that takes due bundles, a few at a
time so that a partner coming back is not met by a herd, and takes each up again from its
stored state.

One set per partner and kind (undo or forward): undos are released first. A bundle is in a
set at most once (its id is the member), so a step deferred twice, or by two rival chains,
comes back once, at the earlier time. Taking a bundle moves it to a lease set for `LEASE_S`
rather than dropping it, so a releaser that dies between taking and sending loses nothing: the
lease runs out and the next releaser takes it again.
"""

from __future__ import annotations

from redis import Redis

LEASE_S = 30.0
KINDS = ("undo", "forward")  # release order: a customer's refund before a new sale

# Scores are milliseconds on the Redis server's clock (one clock for the whole fleet).
_DEFER = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'LT', now_ms + tonumber(ARGV[1]), ARGV[2])
"""

# Due bundles move to the lease set (KEYS[2]) as they are taken; leases that ran out (their
# releaser died) come back first.
_TAKE = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = redis.call('ZRANGE', KEYS[2], '-inf', now_ms, 'BYSCORE')
for _, member in ipairs(lost) do
  redis.call('ZADD', KEYS[1], 'LT', now_ms, member)
  redis.call('ZREM', KEYS[2], member)
end
local due = redis.call('ZRANGE', KEYS[1], '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[2]), member)
end
return due
"""


class DeferredSteps:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._defer = redis.register_script(_DEFER)
        self._take = redis.register_script(_TAKE)

    def key(self, partner: str, kind: str) -> str:
        return f"{self.prefix}deferred:{kind}:{partner}"

    def defer(self, bundle_id: str, partner: str, *, undo: bool, wait_s: float) -> None:
        """Come back to `bundle_id` in `wait_s` (or earlier, if it is already due sooner)."""
        kind = "undo" if undo else "forward"
        self._defer(keys=[self.key(partner, kind)], args=[round(wait_s * 1000), bundle_id])

    def take_due(self, partner: str, kind: str, limit: int) -> list[str]:
        """Lease up to `limit` due bundles of one partner and kind (`released` ends a lease)."""
        key = self.key(partner, kind)
        ids = self._take(keys=[key, f"{key}:leased"], args=[limit, round(LEASE_S * 1000)])
        return [_text(i) for i in ids]

    def released(self, partner: str, kind: str, bundle_id: str) -> None:
        self.redis.zrem(f"{self.key(partner, kind)}:leased", bundle_id)

    def wake(self, partner: str) -> None:
        """The partner is back (its circuit closed): every bundle waiting on it is due now.
        The releasers still take them a few at a time, so they come back paced, not as a herd.
        (A forward step past its deadline then gives up, as it would have at the deadline.)"""
        pipe = self.redis.pipeline(transaction=False)
        for kind in KINDS:
            key = self.key(partner, kind)
            pipe.zunionstore(key, {key: 0})  # every score 0: due
        pipe.execute()

    def counts(self, partners: tuple[str, ...]) -> dict[tuple[str, str], int]:
        """How many bundles wait, per (partner, kind): one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pairs = [(p, k) for p in partners for k in KINDS]
        for partner, kind in pairs:
            pipe.zcard(self.key(partner, kind))
        return dict(zip(pairs, (int(n) for n in pipe.execute()), strict=True))


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

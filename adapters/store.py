"""Bundles in Redis: one versioned document per bundle, changed only by atomic transitions.

Each transition is one Lua script (one round trip) that, only if the version is still the one
read, writes the new document, moves the bundle between status indexes and appends the event
to the events stream. So state, history and published events never disagree, and two workers
racing on one bundle cannot both win: the loser re-reads and re-decides.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from redis import Redis

from process_manager import saga
from process_manager.bundle import FINAL, IN_FLIGHT, Bundle, Status
from process_manager.messages import Event

_TRANSITION = """
-- KEYS: bundle hash, old status index, new status index, events stream,
--       event counters (hash), this minute's moves (hash), in-flight index,
--       [on creation only: booking-id index (hash), email index, correlation index]
-- ARGV: expected version, new version, doc, new status, score, bundle id, stream maxlen,
--       moves ttl, created score, in flight ('1' or ''), undo round (for `start`),
--       booking id ('' but on creation),
--       then for each event applied, in order: name, json ('' = not published),
--       move ('from>to', '' on creation)
local current = redis.call('HGET', KEYS[1], 'version')
if current == false then current = '0' end
if current ~= ARGV[1] then return current end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'status', ARGV[4], 'doc', ARGV[3],
           'round', ARGV[11])
if KEYS[2] ~= KEYS[3] then redis.call('ZREM', KEYS[2], ARGV[6]) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
local moved = false
for i = 13, #ARGV, 3 do
  if ARGV[i + 1] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*',
               'event_name', ARGV[i], 'vip_bundle_id', ARGV[6], 'data', ARGV[i + 1])
  end
  -- Counters for /metrics and the dashboard, paid inside this round trip.
  redis.call('HINCRBY', KEYS[5], ARGV[i], 1)
  if ARGV[i + 2] ~= '' then
    redis.call('HINCRBY', KEYS[6], ARGV[i + 2], 1)
    moved = true
  end
end
if moved then redis.call('EXPIRE', KEYS[6], ARGV[8]) end
-- Unsettled bundles by creation time (the oldest one's age is a gauge); parked ones are out.
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[7], 'NX', ARGV[9], ARGV[6])
else
  redis.call('ZREM', KEYS[7], ARGV[6])
end
-- Search indexes: these fields never change after creation, so they are written once, here.
if #KEYS > 7 then
  redis.call('HSET', KEYS[8], ARGV[12], ARGV[6])
  redis.call('ZADD', KEYS[9], ARGV[9], ARGV[6])
  redis.call('ZADD', KEYS[10], ARGV[9], ARGV[6])
end
return 'ok'
"""

# Per-minute buckets of (from>to) moves live this long: the dashboard shows the last 15 minutes.
MOVES_TTL_S = 3600
MAX_SEARCH = 500  # matches fetched per indexed field
SEEN_TTL_S = 7 * 24 * 3600  # how long a handled message id is remembered

_START = """
-- KEYS: bundle hash
-- ARGV: number of steps n, their n start counter fields, '1' if counted per undo round,
--       statuses the steps may run in...
-- Only in one of those statuses: count one start of each step, return the counter fields
-- followed by the whole hash (doc and counters). Else nothing is counted: {} for "not due",
-- false for "no such bundle".
local status = redis.call('HGET', KEYS[1], 'status')
if status == false then return false end
local n = tonumber(ARGV[1])
for i = n + 3, #ARGV do
  if ARGV[i] == status then
    local suffix = ''
    if ARGV[n + 2] == '1' then
      suffix = ':round-' .. (redis.call('HGET', KEYS[1], 'round') or '0')
    end
    local fields = {}
    for j = 2, n + 1 do
      fields[#fields + 1] = ARGV[j] .. suffix
      redis.call('HINCRBY', KEYS[1], ARGV[j] .. suffix, 1)
    end
    local all = redis.call('HGETALL', KEYS[1])
    for j = #fields, 1, -1 do table.insert(all, 1, fields[j]) end
    return all
  end
end
return {}
"""

STARTS = "starts:"

# Moves the audit cursor forward only: a slow audit run finishing after a later one must not
# send the next run back over what was done (that would only cost time: findings are recorded
# once anyway).
_ADVANCE = """
local current = redis.call('GET', KEYS[1])
if current == false or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('GET', KEYS[1])
"""

Decide = Callable[[Bundle], Event | None]


class BundleNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Applied:
    """The outcome of `BundleStore.apply`: the bundle as stored, and the event if one applied."""

    bundle: Bundle
    event: Event | None
    events: tuple[Event, ...] = ()  # every event written (`event` and what `then` added)


class BundleStore:
    def __init__(self, redis: Redis, prefix: str = "vip-bundles:", stream_maxlen: int = 1_000_000):
        self.redis = redis
        self.prefix = prefix
        self.stream = f"{prefix}events"
        self.stream_maxlen = stream_maxlen
        self._transition = redis.register_script(_TRANSITION)
        self._start = redis.register_script(_START)
        self._advance = redis.register_script(_ADVANCE)

    # --- keys ---
    def _bundle_key(self, bundle_id: str) -> str:
        return f"{self.prefix}bundle:{bundle_id}"

    def status_key(self, status: Status | str) -> str:
        return f"{self.prefix}status:{status}"

    @property
    def event_counts_key(self) -> str:
        """Hash: event name -> how many times it was applied (every transition, ever)."""
        return f"{self.prefix}counts:events"

    def moves_key(self, minute: int) -> str:
        """Hash: 'from>to' -> transitions in that minute (epoch minutes), kept MOVES_TTL_S."""
        return f"{self.prefix}counts:moves:{minute}"

    @property
    def in_flight_key(self) -> str:
        """Sorted set of bundles neither settled nor parked, scored by creation time."""
        return f"{self.prefix}in-flight"

    def _booking_index(self) -> str:
        return f"{self.prefix}index:booking"

    def _email_index(self, email: str) -> str:
        return f"{self.prefix}index:email:{email.strip().lower()}"

    def _correlation_index(self, correlation_id: str) -> str:
        return f"{self.prefix}index:correlation:{correlation_id}"

    # --- reads ---
    def get(self, bundle_id: str) -> Bundle | None:
        """The bundle with its step start counters (one read: the document and the counters
        come from the same hash)."""
        return _from_hash(self.redis.hgetall(self._bundle_key(bundle_id)))

    def require(self, bundle_id: str) -> Bundle:
        bundle = self.get(bundle_id)
        if bundle is None:
            raise BundleNotFound(f"no vip bundle {bundle_id}")
        return bundle

    def list(self, status: Status, offset: int = 0, limit: int = 50) -> list[Bundle]:
        """Bundles in `status`, most recently changed first."""
        ids = self.redis.zrevrange(self.status_key(status), offset, offset + limit - 1)
        return self.many(ids)

    def count(self, status: Status) -> int:
        return int(self.redis.zcard(self.status_key(status)))

    def counts(self) -> dict[Status, int]:
        """Bundles in every status, from the status indexes (one round trip, no scan)."""
        pipe = self.redis.pipeline(transaction=False)
        for status in Status:
            pipe.zcard(self.status_key(status))
        return {status: int(n) for status, n in zip(Status, pipe.execute(), strict=True)}

    def event_counts(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.event_counts_key)
        return {_text(k): int(v) for k, v in raw.items()}

    def recent_moves(self, minutes: int = 15, now: float | None = None) -> dict[str, int]:
        """'from>to' -> transitions over the last `minutes` minutes (this one included)."""
        this_minute = int((now or time.time()) // 60)
        pipe = self.redis.pipeline(transaction=False)
        for minute in range(this_minute - minutes + 1, this_minute + 1):
            pipe.hgetall(self.moves_key(minute))
        total: dict[str, int] = {}
        for bucket in pipe.execute():
            for move, n in bucket.items():
                total[_text(move)] = total.get(_text(move), 0) + int(n)
        return total

    def oldest_in_flight(self) -> float | None:
        """Creation time (epoch seconds) of the oldest bundle still in flight, if any."""
        oldest = self.redis.zrange(self.in_flight_key, 0, 0, withscores=True)
        return float(oldest[0][1]) if oldest else None

    def search(self, text: str) -> list[Bundle]:
        """Bundles whose id, booking id, customer email (any case) or correlation id is `text`.

        Each field is one indexed lookup (written when the bundle was created), newest first;
        at most MAX_SEARCH matches per field.
        """
        text = text.strip()
        if not text:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self._bundle_key(text))
        pipe.hget(self._booking_index(), text)
        pipe.zrevrange(self._email_index(text), 0, MAX_SEARCH - 1)
        pipe.zrevrange(self._correlation_index(text), 0, MAX_SEARCH - 1)
        exists, by_booking, by_email, by_correlation = pipe.execute()
        found = [text] if exists else []
        found += [by_booking] if by_booking else []
        found += [*by_email, *by_correlation]
        return self.many(list(dict.fromkeys(_text(i) for i in found)))

    def stale(self, status: Status, unchanged_for_s: float, limit: int = 500) -> list[str]:
        """Ids of bundles in `status` with no transition for `unchanged_for_s` seconds."""
        cutoff = time.time() - unchanged_for_s
        ids = self.redis.zrangebyscore(self.status_key(status), "-inf", cutoff, 0, limit)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def settled(
        self,
        after: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[str, float]]:
        """(id, settle time) of bundles in a final status that settled in (after, until],
        oldest first (or, with `newest`, the newest `limit` of them, still oldest first).

        The audit's walk over the final-status indexes, whose score is the settle time.
        """
        low = "-inf" if after is None else f"({after!r}"
        high = "+inf" if until is None else repr(until)
        page = {"start": 0, "num": limit} if limit is not None else {}
        merged: list[tuple[str, float]] = []
        for status in sorted(FINAL):
            key = self.status_key(status)
            if newest:
                rows = self.redis.zrevrangebyscore(key, high, low, withscores=True, **page)
            else:
                rows = self.redis.zrangebyscore(key, low, high, withscores=True, **page)
            merged += [(i.decode() if isinstance(i, bytes) else i, score) for i, score in rows]
        merged.sort(key=lambda row: row[1])
        if limit is None:
            return merged
        return merged[-limit:] if newest else merged[:limit]

    def many(self, ids: list[bytes | str]) -> list[Bundle]:
        """The bundles with these ids that exist, in one round trip."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for bundle_id in ids:
            pipe.hget(self._bundle_key(_text(bundle_id)), "doc")
        return [Bundle.model_validate_json(doc) for doc in pipe.execute() if doc]

    # --- writes ---
    def create(self, bundle: Bundle, event: Event) -> tuple[Bundle, bool]:
        """Store a new bundle with its first event; (stored bundle, False) if the id exists."""
        first = bundle.model_copy(update={"version": 0, "history": []})
        stored = saga.apply_initial(first, event)
        if self._write(None, stored, [(None, event)]):
            return stored, True
        return self.require(bundle.vip_bundle_id), False

    def save(self, old: Bundle, new: Bundle, event: Event | None) -> bool:
        """Compare-and-set: store `new` only if the bundle is still at `old.version`."""
        return self._write(old, new, [(old.status, event)] if event is not None else [])

    def apply(
        self,
        bundle_id: str,
        decide: Decide,
        attempts: int = 20,
        current: Bundle | None = None,
        then: Decide | Sequence[Decide] = (),
    ) -> Applied:
        """Read the bundle, ask `decide` for an event, apply and store it atomically.

        `decide` returning None, or an event the bundle refuses (a duplicate or late message),
        changes nothing. A concurrent change makes us re-read and decide again. `current`, a
        copy the caller just read, saves the first read (the version check keeps it safe).
        `then`, asked in order about the bundle after the events so far, may add more events
        to the same write (the return flight booked, then finalized; the other tickets of a
        refund, then failed: one round trip, not several). Those it answers None or that do
        not apply are left out.
        """
        follow_ups = [then] if callable(then) else list(then)
        for _ in range(attempts):
            bundle = current or self.require(bundle_id)
            current = None
            event = decide(bundle)
            if event is None:
                return Applied(bundle, None)
            try:
                new = saga.apply(bundle, event)
            except saga.IllegalTransition:
                return Applied(bundle, None)
            steps: list[tuple[Status | None, Event]] = [(bundle.status, event)]
            for ask in follow_ups:
                if (follow := ask(new)) is None:
                    continue
                try:
                    after = saga.apply(new, follow)
                except saga.IllegalTransition:
                    continue  # not due after all: left out of this write
                steps.append((new.status, follow))
                new = after
            if self._write(bundle, new, steps):
                return Applied(new, event, tuple(e for _, e in steps))
        raise RuntimeError(f"bundle {bundle_id}: too much contention, gave up after {attempts}")

    def _write(
        self, old: Bundle | None, new: Bundle, steps: list[tuple[Status | None, Event]]
    ) -> bool:
        """One transition script: `new` replaces `old` (None: creation) if still at its
        version; `steps` are the events applied on the way, each with the status it left."""
        updated = new.updated_at.timestamp()
        keys = [
            self._bundle_key(new.vip_bundle_id),
            self.status_key(old.status if old else new.status),
            self.status_key(new.status),
            self.stream,
            self.event_counts_key,
            self.moves_key(int(updated // 60)),
            self.in_flight_key,
        ]
        args: list[str | int | float] = [
            old.version if old else 0,
            new.version,
            new.model_dump_json(),
            str(new.status),
            _score(new),
            new.vip_bundle_id,
            self.stream_maxlen,
            MOVES_TTL_S,
            new.created_at.timestamp(),
            "1" if new.status in IN_FLIGHT else "",
            new.compensation_failures,  # the undo round, for `start`
            new.booking_id if old is None else "",
        ]
        targets = [entry.to_status for entry in new.history[-len(steps) :]] if steps else []
        for (source, event), target in zip(steps, targets, strict=True):
            message = event.to_message() if event.published else None
            args += [
                event.name(),
                _json(message) if message else "",
                f"{source}>{target}" if source is not None else "",
            ]
        if old is None:
            keys += [
                self._booking_index(),
                self._email_index(new.customer_email),
                self._correlation_index(new.correlation_id),
            ]
        result = self._transition(keys=keys, args=args)
        return result in (b"ok", "ok")

    def touch(self, bundle: Bundle) -> None:
        """Mark the bundle as looked after now (the reconciler's "not again before ...")."""
        self.redis.zadd(
            self.status_key(bundle.status), {bundle.vip_bundle_id: time.time()}, xx=True
        )

    # --- housekeeping ---
    def start(
        self, bundle_id: str, step: str, runs_in: Iterable[str], per_round: bool = False
    ) -> tuple[Bundle, int] | None:
        """If the bundle's status is one of `runs_in`: count one more start of `step` and return
        the bundle (counters included) with that count. Else None, and nothing is counted.

        One script, so "is it due" and "count the start" cannot be split by a transition: once
        a bundle is `cancelling`, no forward step starts any more and its count is final.
        Celery has no cap on redeliveries and Redis no "redelivered" flag: a step whose worker
        dies every time it runs would be started forever without this count. An undo's count
        (`per_round`) starts afresh in each round of a parked bundle taken up again.
        `BundleNotFound` for an unknown bundle.
        """
        started = self.start_all(bundle_id, [step], runs_in, per_round)
        return None if started is None else (started[0], started[1][0])

    def start_all(
        self, bundle_id: str, steps: Sequence[str], runs_in: Iterable[str], per_round: bool = False
    ) -> tuple[Bundle, list[int]] | None:
        """`start` for several steps that one task runs together (a bundle's ticket refunds):
        one round trip counts a start of each; their counts come back in order."""
        args = [len(steps), *(f"{STARTS}{step}" for step in steps), "1" if per_round else "0"]
        reply = self._start(keys=[self._bundle_key(bundle_id)], args=[*args, *runs_in])
        if reply is None:
            raise BundleNotFound(f"no vip bundle {bundle_id}")
        if not reply:
            return None
        fields, flat = [_text(f) for f in reply[: len(steps)]], reply[len(steps) :]
        bundle = _from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        assert bundle is not None
        return bundle, [bundle.starts[field.removeprefix(STARTS)] for field in fields]

    def audit_cursor(self) -> float | None:
        """The settle time up to which the periodic audit has looked (None: never ran)."""
        value = self.redis.get(f"{self.prefix}audit:cursor")
        return float(value) if value is not None else None

    def advance_audit_cursor(self, settled_until: float) -> float:
        """Move the cursor to `settled_until` unless it is further already; where it is now."""
        return float(self._advance(keys=[f"{self.prefix}audit:cursor"], args=[repr(settled_until)]))

    def first_time(self, message_id: str, ttl_s: int = SEEN_TTL_S) -> bool:
        """True the first time a message id is seen (duplicate-delivery guard)."""
        return bool(self.redis.set(self._seen_key(message_id), 1, nx=True, ex=ttl_s))

    def first_time_get(self, message_id: str, bundle_id: str) -> tuple[bool, Bundle | None]:
        """`first_time` and `get` in one round trip (the process manager's two reads)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._seen_key(message_id), 1, nx=True, ex=SEEN_TTL_S)
        pipe.hgetall(self._bundle_key(bundle_id))
        first, fields = pipe.execute()
        return bool(first), _from_hash(fields)

    def _seen_key(self, message_id: str) -> str:
        return f"{self.prefix}seen:{message_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _from_hash(fields: Mapping[bytes | str, bytes | str]) -> Bundle | None:
    """A bundle from its hash: the document plus its `starts:*` counters."""
    data = {_text(k): v for k, v in fields.items()}
    doc = data.get("doc")
    if doc is None:
        return None
    starts = {k.removeprefix(STARTS): int(v) for k, v in data.items() if k.startswith(STARTS)}
    return Bundle.model_validate_json(doc).model_copy(update={"starts": starts})


def _score(bundle: Bundle) -> float:
    # A final status is scored by when the bundle settled, so noting drift later neither moves
    # it among the recent ones nor past the audit's cursor; elsewhere by its last change (the
    # reconciler's "unchanged for").
    at = bundle.status_since() if bundle.status in FINAL else bundle.updated_at
    return at.timestamp()


def _json(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))

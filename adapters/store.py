"""Bundles in Redis: one versioned document per bundle, changed only by atomic transitions.

Each transition is one Lua script (one round trip) that, only if the version is still the one
read, writes the new document, moves the bundle between status indexes and appends the event
to the events stream. So state, history and published events never disagree, and two workers
racing on one bundle cannot both win: the loser re-reads and re-decides.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from redis import Redis

from adapters import store_scripts as scripts
from adapters import telemetry
from adapters.partner_gate import Admission, AdmissionAsk, admission_of
from adapters.redis_connection import NotReplicated, follow_master, sentinel_managed
from adapters.store_queries import STARTS, BundleQueries, as_text, bundle_from_hash
from adapters.store_retention import BundleArchived, BundleRetention
from process_manager import saga, transition, versions
from process_manager.bundle import FINAL, IN_FLIGHT, Bundle, Status
from process_manager.messages import Event
from process_manager.versions import NewerSchema

# Per-minute buckets of (from>to) moves live this long: the dashboard shows the last 15 minutes.
MOVES_TTL_S = 3600
SEEN_TTL_S = 7 * 24 * 3600  # how long a handled message id is remembered


Decide = Callable[[Bundle], Event | None]


class BundleNotFound(LookupError):
    pass


class Started(NamedTuple):
    """A step's start (`BundleStore.start_all`): the bundle, each step's start count, and the
    partner gate's answer when it was asked along."""

    bundle: Bundle
    starts: list[int]
    admission: Admission | None = None


@dataclass(frozen=True)
class Applied:
    """The outcome of `BundleStore.apply`: the bundle as stored, and the event if one applied."""

    bundle: Bundle
    event: Event | None
    events: tuple[Event, ...] = ()  # every event written (`event` and what `then` added)


class BundleStore(BundleRetention, BundleQueries):
    def __init__(self, redis: Redis, prefix: str = "vip-bundles:", stream_maxlen: int = 1_000_000):
        self.redis = redis
        self.prefix = prefix
        self.stream = f"{prefix}events"
        self.stream_maxlen = stream_maxlen
        self._local = threading.local()  # what this thread's last creation saw
        self._transition = redis.register_script(scripts.TRANSITION)
        self._start = redis.register_script(scripts.START)
        self._advance = redis.register_script(scripts.ADVANCE_CURSOR)
        self._remove = redis.register_script(scripts.ARCHIVE_REMOVE)
        self._restore = redis.register_script(scripts.RESTORE)

    # --- reads of one bundle (the queries: adapters/store_queries.py) ---
    def get(self, bundle_id: str) -> Bundle | None:
        """The bundle with its step start counters (one read: the document and the counters
        come from the same hash)."""
        return bundle_from_hash(self.redis.hgetall(self._bundle_key(bundle_id)))

    def require(self, bundle_id: str) -> Bundle:
        bundle = self.get(bundle_id)
        if bundle is None:
            raise BundleNotFound(f"no vip bundle {bundle_id}")
        return bundle

    # --- writes ---
    def create(self, bundle: Bundle, event: Event) -> tuple[Bundle, bool]:
        """Store a new bundle with its first event; (stored bundle, False) if the id exists.

        `BundleArchived` if the id names a bundle moved to the archive (its tombstone)."""
        self._local.unreplicated = None  # set again only if this call creates it
        first = bundle.model_copy(update={"version": 0, "history": []})
        stored = transition.apply_initial(first, event)
        if self._write(None, stored, [(None, event)]):
            return stored, True
        if (existing := self.get(bundle.vip_bundle_id)) is not None:
            return existing, False
        if (digest := self.tombstone(bundle.vip_bundle_id)) is not None:
            raise BundleArchived(bundle.vip_bundle_id, digest)
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
                new = transition.apply(bundle, event)
            except saga.IllegalTransition:
                return Applied(bundle, None)
            steps: list[tuple[Status | None, Event]] = [(bundle.status, event)]
            for ask in follow_ups:
                if (follow := ask(new)) is None:
                    continue
                try:
                    after = transition.apply(new, follow)
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
            self.tomb_field(new.vip_bundle_id) if old is None else "",
            (new.created_by_release or "") if old is None else "",
            new.schema_version,
        ]
        context = telemetry.traceparent()  # each published event carries its trace context
        for source, event in steps:
            # The target from the table, not from the history: a parked bundle's repeated
            # rounds are counted on its last entries, not appended (transition.apply).
            target = new.status if source is None else saga.TRANSITIONS[(source, type(event))]
            message = event.to_message() if event.published else None
            if message is not None and context is not None:
                message["header"]["traceparent"] = context
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
                self.tomb_key(new.vip_bundle_id),
            ]
        if new.tenant is not None:  # the tenant's own status indexes, last (see TRANSITION)
            keys += [
                self.status_key(old.status if old else new.status, new.tenant),
                self.status_key(new.status, new.tenant),
            ]
        result = as_text(self._transition(keys=keys, args=args))
        if result == "ok" or result.startswith("ok:"):
            if old is None:  # for confirm_replicated, in this thread: no replica to wait for
                self._local.unreplicated = new.vip_bundle_id if result == "ok:0" else None
            return True
        # Retried after a failover cut the reply off, a transition finds its own write done:
        # the version it set, with its document. That write is ours, not a lost race. (A
        # creation retried so answers "exists"; the reconciler then starts its chain.)
        return (
            old is not None
            and result == str(new.version)
            and as_text(self.redis.hget(keys[0], "doc") or b"") == args[2]
        )

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
        return None if started is None else (started.bundle, started.starts[0])

    def start_all(
        self,
        bundle_id: str,
        steps: Sequence[str],
        runs_in: Iterable[str],
        per_round: bool = False,
        admit: AdmissionAsk | None = None,
    ) -> Started | None:
        """`start` for several steps that one task runs together (a bundle's ticket refunds):
        one round trip counts a start of each; their counts come back in order. `admit`: the
        partner gate's question, asked in the same round trip when (only when) the step is
        due; its answer is `Started.admission`."""
        args = [len(steps), *(f"{STARTS}{step}" for step in steps), "1" if per_round else "0"]
        args += [versions.DOCUMENT, *(admit.args if admit else ("", ""))]
        keys = [self._bundle_key(bundle_id), *([admit.key] if admit else [])]
        reply = self._start(keys=keys, args=[*args, *runs_in])
        if reply is None:
            raise BundleNotFound(f"no vip bundle {bundle_id}")
        if not reply:
            return None
        if as_text(reply[0]) == "newer":  # nothing counted: a newer release's to run
            newer = int(as_text(reply[1]))
            raise NewerSchema("bundle document", newer, versions.DOCUMENT, bundle_id)
        admission = None
        if admit is not None:
            admission, reply = admission_of(reply[:4]), reply[4:]
        fields, flat = [as_text(f) for f in reply[: len(steps)]], reply[len(steps) :]
        bundle = bundle_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        assert bundle is not None
        starts = [bundle.starts[field.removeprefix(STARTS)] for field in fields]
        return Started(bundle, starts, admission)

    def forget_starts(self, bundle_id: str, start_keys: Sequence[str]) -> None:
        """Take back one start of each step: it was turned away before reaching its partner
        (a wait burns no attempt, shared/partners-api.md "Back-pressure")."""
        pipe = self.redis.pipeline(transaction=False)
        for key in start_keys:
            pipe.hincrby(self._bundle_key(bundle_id), f"{STARTS}{key}", -1)
        pipe.execute()

    def audit_cursor(self) -> float | None:
        """The settle time up to which the periodic audit has looked (None: never ran)."""
        value = self.redis.get(self.audit_cursor_key)
        return float(value) if value is not None else None

    def advance_audit_cursor(self, settled_until: float) -> float:
        """Move the cursor to `settled_until` unless it is further already; where it is now."""
        return float(self._advance(keys=[self.audit_cursor_key], args=[repr(settled_until)]))

    def first_time(self, message_id: str, ttl_s: int = SEEN_TTL_S) -> bool:
        """True the first time a message id is seen (duplicate-delivery guard)."""
        return bool(self.redis.set(self._seen_key(message_id), 1, nx=True, ex=ttl_s))

    def confirm_replicated(self, bundle_id: str, version: int, timeout_s: float) -> None:
        """Return once the bundle, at `version` or later, is on a replica too (Redis WAIT),
        or at once when the master has no replica; else raise `NotReplicated`.

        WAIT covers the writes of the connection it runs on; ours may have gone through
        another connection of the pool. So the check reads the bundle and writes a marker
        on one connection, then waits for that: replication is one ordered stream, so a
        replica that has the marker has every write the master made before it, ours too.
        The check runs on the master the sentinels name now: a write that went to a former
        master after its replica was promoted is missing there, and is not confirmed.
        """
        if (
            version == 1
            and getattr(self._local, "unreplicated", None) == bundle_id
            and not sentinel_managed(self.redis)
        ):
            # Created by this thread just now, and the creating script saw no replica: the
            # answer this check would get, without its round trip. (With sentinels the check
            # still runs: the master may have changed since.)
            return
        follow_master(self.redis)
        key, marker = self._bundle_key(bundle_id), f"{self.prefix}replication-marker"
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key, "version")
        pipe.execute_command("ROLE")
        stored, role = pipe.execute(raise_on_error=False)
        if isinstance(stored, Exception):
            raise stored
        if stored is None or int(stored) < version:
            raise NotReplicated(f"bundle {bundle_id}: version {version} is not on the master")
        # A master without replicas has nothing to wait for; nor can we tell where ROLE is
        # refused (some managed Redis services rename it): they replicate by their own rules.
        if isinstance(role, Exception) or len(role) < 3 or not role[2]:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(key, "version")
        pipe.incr(marker)
        pipe.wait(1, max(1, int(timeout_s * 1000)))
        stored, _, acked = pipe.execute()
        if stored is None or int(stored) < version or int(acked) < 1:
            raise NotReplicated(
                f"bundle {bundle_id}: no replica acknowledged version {version} "
                f"within {timeout_s} s"
            )

    def first_time_get(self, message_id: str, bundle_id: str) -> tuple[bool, Bundle | None]:
        """`first_time` and `get` in one round trip (the process manager's two reads)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._seen_key(message_id), 1, nx=True, ex=SEEN_TTL_S)
        pipe.hgetall(self._bundle_key(bundle_id))
        first, fields = pipe.execute()
        return bool(first), bundle_from_hash(fields)


def _score(bundle: Bundle) -> float:
    # A final status is scored by when the bundle settled, so noting drift later neither moves
    # it among the recent ones nor past the audit's cursor; elsewhere by its last change (the
    # reconciler's "unchanged for").
    at = bundle.status_since() if bundle.status in FINAL else bundle.updated_at
    return at.timestamp()


def _json(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))

"""What the doors and operators ask the bundle store: pages by status, counts, search, the
settled bundles the audit walks. Reads only, each a bounded number of indexed round trips
(nothing scans bundles). A mixin of `BundleStore`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from redis import Redis

from adapters.store_keys import BundleKeys
from process_manager.bundle import FINAL, Bundle, Status
from process_manager.versions import NewerSchema

log = logging.getLogger(__name__)

MAX_SEARCH = 500  # matches fetched per indexed field
STARTS = "starts:"  # hash fields counting each step's starts
# The release that created the bundle, kept beside the document: a release before 0.2.0
# rewrites the document without the fields it does not know, but leaves this hash field be.
CREATED_BY = "created_by"


class BundleQueries(BundleKeys):
    redis: Redis

    def list(
        self, status: Status, offset: int = 0, limit: int = 50, tenant: str | None = None
    ) -> list[Bundle]:
        """Bundles in `status`, most recently changed first (with `tenant`: its own only)."""
        ids = self.redis.zrevrange(self.status_key(status, tenant), offset, offset + limit - 1)
        return self.many(ids)

    def count(self, status: Status, tenant: str | None = None) -> int:
        return int(self.redis.zcard(self.status_key(status, tenant)))

    def counts(self) -> dict[Status, int]:
        """Bundles in every status, archived ones included: the status indexes plus the
        archived counters (one round trip, no scan)."""
        pipe = self.redis.pipeline(transaction=False)
        for status in Status:
            pipe.zcard(self.status_key(status))
        pipe.hgetall(self.archived_counts_key)
        *live, archived = pipe.execute()
        more = {as_text(k): int(v) for k, v in archived.items()}
        return {s: int(n) + more.get(s.value, 0) for s, n in zip(Status, live, strict=True)}

    def archived_counts(self) -> dict[Status, int]:
        """Bundles of each final status moved to the archive (what the scripts counted)."""
        raw = {as_text(k): int(v) for k, v in self.redis.hgetall(self.archived_counts_key).items()}
        return {s: raw.get(s.value, 0) for s in FINAL}

    def event_counts(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.event_counts_key)
        return {as_text(k): int(v) for k, v in raw.items()}

    def recent_moves(self, minutes: int = 15, now: float | None = None) -> dict[str, int]:
        """'from>to' -> transitions over the last `minutes` minutes (this one included)."""
        this_minute = int((now or time.time()) // 60)
        pipe = self.redis.pipeline(transaction=False)
        for minute in range(this_minute - minutes + 1, this_minute + 1):
            pipe.hgetall(self.moves_key(minute))
        total: dict[str, int] = {}
        for bucket in pipe.execute():
            for move, n in bucket.items():
                total[as_text(move)] = total.get(as_text(move), 0) + int(n)
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
        return self.many(list(dict.fromkeys(as_text(i) for i in found)))

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
        """The bundles with these ids that exist, in one round trip (those written by a
        newer release are left out: its own doors list them)."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for bundle_id in ids:
            pipe.hmget(self._bundle_key(as_text(bundle_id)), "doc", CREATED_BY)
        found = []
        for doc, created_by in pipe.execute():
            if doc:
                try:
                    found.append(Bundle.from_document(doc, _text_or_none(created_by)))
                except NewerSchema as exc:
                    log.info("%s", exc)
        return found


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _text_or_none(value: bytes | str | None) -> str | None:
    return None if value is None else as_text(value)


def bundle_from_hash(fields: Mapping[bytes | str, bytes | str]) -> Bundle | None:
    """A bundle from its hash: the document plus its `starts:*` counters. `NewerSchema` for
    a document a newer release wrote."""
    data = {as_text(k): v for k, v in fields.items()}
    doc = data.get("doc")
    if doc is None:
        return None
    starts = {k.removeprefix(STARTS): int(v) for k, v in data.items() if k.startswith(STARTS)}
    bundle = Bundle.from_document(doc, _text_or_none(data.get(CREATED_BY)))
    return bundle.model_copy(update={"starts": starts})

"""Retention in the Redis store: what the archiver reads, removes and restores, the tombstones
archived bundles leave, and how much memory settled bundles hold. A mixin of `BundleStore`.

An archived bundle leaves Redis with every index entry it had, in one script that checks the
version (adapters/store_scripts.py, ARCHIVE_REMOVE). What stays is its tombstone: the bundle
id (16 bytes) and an 11-character digest of its request in one of TOMB_BUCKETS hashes
(measured in bench/archive.py), checked by the creation script, so the same id sent again
is still one bundle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from adapters.store_queries import CREATED_BY, STARTS, as_text, bundle_from_hash
from process_manager.bundle import FINAL, Bundle


class BundleArchived(LookupError):
    """The id names a bundle moved to the archive; `digest` is its request's fingerprint."""

    def __init__(self, bundle_id: str, digest: str):
        super().__init__(f"vip bundle {bundle_id} is archived")
        self.bundle_id = bundle_id
        self.digest = digest


@dataclass(frozen=True)
class MemoryUse:
    """Redis memory, and an estimate of what settled bundles hold of it (sampled)."""

    used: int
    maxmemory: int  # 0: no limit set
    settled_bundles: int
    settled_bytes: int  # estimate: sampled MEMORY USAGE of bundle hashes x settled bundles
    per_settled_bundle: int
    sampled: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "used_bytes": self.used,
            "maxmemory_bytes": self.maxmemory,
            "settled_bundles": self.settled_bundles,
            "settled_bytes": self.settled_bytes,
            "per_settled_bundle_bytes": self.per_settled_bundle,
            "sampled": self.sampled,
        }


# Status-index entries and search-index entries a bundle has besides its hash (~bytes each,
# measured in bench/archive.py): added to the sampled MEMORY USAGE of its hash.
INDEX_BYTES_PER_BUNDLE = 200


class BundleRetention:
    redis: Redis
    prefix: str
    _remove: Any
    _restore: Any

    # Key names, from BundleKeys (the other mixin).
    _bundle_key: Any
    status_key: Any
    in_flight_key: str
    _booking_index: Any
    _email_index: Any
    _correlation_index: Any
    tomb_key: Any
    archived_counts_key: str
    tomb_field: Any
    settled: Any

    def due_for_archive(self, settled_until: float, limit: int) -> list[str]:
        """Ids of bundles that settled by `settled_until`, oldest first, at most `limit`."""
        return [bundle_id for bundle_id, _ in self.settled(until=settled_until, limit=limit)]

    def snapshot(self, ids: Sequence[str]) -> list[Bundle]:
        """These bundles as stored (document, version and counters), one round trip; the ids
        that are gone (archived already) are left out."""
        pipe = self.redis.pipeline(transaction=False)
        for bundle_id in ids:
            pipe.hgetall(self._bundle_key(bundle_id))
        return [b for b in map(bundle_from_hash, pipe.execute()) if b is not None]

    def remove_archived(self, bundles: Sequence[Bundle]) -> list[int]:
        """Remove these archived bundles from Redis, each only if still at the version and
        status it was archived with (one script per bundle, pipelined). Per bundle: 1 removed,
        0 changed since (it stays), 2 gone already."""
        pipe = self.redis.pipeline(transaction=False)
        for b in bundles:
            args = [*_remove_args(b), self.tomb_field(b.vip_bundle_id)]
            self._remove(keys=self._bundle_keys(b), args=args, client=pipe)
        return [int(r) for r in pipe.execute()]

    def _bundle_keys(self, b: Bundle) -> list[str]:
        keys = [
            self._bundle_key(b.vip_bundle_id),
            self.status_key(b.status),
            self.in_flight_key,
            self._booking_index(),
            self._email_index(b.customer_email),
            self._correlation_index(b.correlation_id),
            self.tomb_key(b.vip_bundle_id),
            self.archived_counts_key,
        ]
        if b.tenant is not None:  # its tenant's status index too (the script ZREMs KEYS[9:])
            keys.append(self.status_key(b.status, b.tenant))
        return keys

    def tombstone(self, bundle_id: str) -> str | None:
        """The request digest an archived bundle left in Redis (None: not archived)."""
        value = self.redis.hget(self.tomb_key(bundle_id), self.tomb_field(bundle_id))
        return None if value is None else as_text(value)

    def restore(self, bundle: Bundle) -> bool:
        """Put an archived bundle back (with its indexes and counters) and drop its tombstone.
        False if a bundle with its id is in Redis already."""
        keys = [
            self._bundle_key(bundle.vip_bundle_id),
            self.status_key(bundle.status),
            self._booking_index(),
            self._email_index(bundle.customer_email),
            self._correlation_index(bundle.correlation_id),
            self.tomb_key(bundle.vip_bundle_id),
            self.archived_counts_key,
        ]
        if bundle.tenant is not None:  # its tenant's status index too (the script ZADDs KEYS[8:])
            keys.append(self.status_key(bundle.status, bundle.tenant))
        args: list[str | int | float | bytes] = [
            bundle.vip_bundle_id,
            bundle.version,
            str(bundle.status),
            bundle.model_dump_json(),
            bundle.compensation_failures,
            # Scored as if it settled now: not due for archiving again before the cancel that
            # brought it back is applied (a few milliseconds later), nor for RETENTION_S after.
            time.time(),
            bundle.created_at.timestamp(),
            bundle.booking_id,
            self.tomb_field(bundle.vip_bundle_id),
        ]
        for step, n in bundle.starts.items():
            args += [f"{STARTS}{step}", n]
        if bundle.created_by_release:  # a hash field like the counters (RESTORE sets them all)
            args += [CREATED_BY, bundle.created_by_release]
        args += ["schema", bundle.schema_version]
        return int(self._restore(keys=keys, args=args)) == 1

    def memory(self, sample: int = 50) -> MemoryUse:
        """Redis's used memory and maxmemory, and what settled bundles hold: MEMORY USAGE of
        up to `sample` random settled bundles' hashes (plus their index entries) times their
        number. A few round trips, whatever the number of bundles."""
        info = self.redis.info("memory")
        pipe = self.redis.pipeline(transaction=False)
        for status in sorted(FINAL):
            pipe.zcard(self.status_key(status))
        counts = dict(zip(sorted(FINAL), map(int, pipe.execute()), strict=True))
        settled = sum(counts.values())
        ids: list[str] = []
        for status, n in counts.items():
            if n:
                share = max(1, round(sample * n / settled))
                picked = self.redis.zrandmember(self.status_key(status), share) or []
                ids += [as_text(i) for i in picked]
        for bundle_id in ids:
            pipe.memory_usage(self._bundle_key(bundle_id), samples=0)
        sizes = [int(s) for s in pipe.execute() if s] if ids else []
        per = (sum(sizes) // len(sizes) + INDEX_BYTES_PER_BUNDLE) if sizes else 0
        return MemoryUse(
            used=int(info.get("used_memory", 0)),
            maxmemory=int(info.get("maxmemory", 0)),
            settled_bundles=settled,
            settled_bytes=per * settled,
            per_settled_bundle=per,
            sampled=len(sizes),
        )


def _remove_args(b: Bundle) -> list[str | int | bytes]:
    return [b.version, str(b.status), b.vip_bundle_id, b.booking_id, b.request_digest()]

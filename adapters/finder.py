"""Find a bundle wherever it is: live in Redis, or moved to the archive.

The doors ask "find this bundle", not "which store". Redis is asked first: a bundle that is
briefly in both (archived, not yet removed; or brought back by a cancel) is the live one.
Pages of a final status continue into the archive after the last live bundle (archived ones
settled longer ago than any live one). Without an archive this is the Redis store alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.archive import BundleArchive
from adapters.store import BundleStore
from process_manager.bundle import FINAL, Bundle, Status


class BundleFinder:
    def __init__(self, store: BundleStore, archive: BundleArchive | None = None):
        self.store = store
        self.archive = archive

    @property
    def archiving(self) -> bool:
        return self.archive is not None

    def get(self, bundle_id: str) -> Bundle | None:
        bundle = self.store.get(bundle_id)
        if bundle is None and self.archive is not None:
            return self.archive.get(bundle_id)
        return bundle

    def many(self, ids: Sequence[str]) -> list[Bundle]:
        """The bundles with these ids, live ones from Redis, the rest from the archive."""
        live = {b.vip_bundle_id: b for b in self.store.many(list(ids))}
        missing = [i for i in ids if i not in live]
        if missing and self.archive is not None:
            live.update({b.vip_bundle_id: b for b in self.archive.many(missing)})
        return [live[i] for i in ids if i in live]

    def search(self, text: str) -> list[Bundle]:
        found = self.store.search(text)
        if self.archive is not None:
            seen = {b.vip_bundle_id for b in found}
            found += [b for b in self.archive.search(text) if b.vip_bundle_id not in seen]
        return found

    def count(self, status: Status, tenant: str | None = None) -> int:
        n = self.store.count(status, tenant=tenant)
        if status in FINAL:
            if tenant is None:  # the archived ones, as counted in Redis by the removal script
                n += self.store.archived_counts()[status]
            elif self.archive is not None:  # a tenant's: counted by the archive's index
                n += self.archive.count(status, tenant)
        return n

    def list(
        self, status: Status, offset: int = 0, limit: int = 50, tenant: str | None = None
    ) -> list[Bundle]:
        """A page of bundles in `status` (of `tenant` only, when given): the live ones (most
        recently changed first), then, for a final status, the archived ones (most recently
        settled first)."""
        live_count = self.store.count(status, tenant=tenant)
        page = self.store.list(status, offset, limit, tenant=tenant) if offset < live_count else []
        if self.archive is None or status not in FINAL or len(page) >= limit:
            return page
        start = max(offset - live_count, 0)
        archived = self.archive.list(status, start, limit - len(page), tenant=tenant)
        return page + self._not_live(archived)

    def settled(
        self,
        after: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[str, float]]:
        """The audit's walk over settled bundles, live and archived (see BundleStore.settled)."""
        rows = self.store.settled(after, until, limit, newest)
        if self.archive is not None:
            rows = list(dict(rows + self.archive.settled(after, until, limit, newest)).items())
            rows.sort(key=lambda row: row[1])
            if limit is not None:
                rows = rows[-limit:] if newest else rows[:limit]
        return rows

    def _not_live(self, bundles: list[Bundle]) -> list[Bundle]:
        """Leave out archived rows whose bundle is also live (briefly in both)."""
        if not bundles:
            return bundles
        pipe = self.store.redis.pipeline(transaction=False)
        for b in bundles:
            pipe.exists(self.store._bundle_key(b.vip_bundle_id))
        live = pipe.execute()
        return [b for b, there in zip(bundles, live, strict=True) if not there]

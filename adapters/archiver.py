"""Moving settled bundles from Redis to the archive, crash-safe, in batches.

A pass: the bundles that settled more than RETENTION_S ago (the final-status indexes are
scored by settle time), oldest first, at most a batch; read as stored (document, version,
counters); written to the archive and committed; only then removed from Redis, each with
every index entry it has, by one script that checks its version and status
(store_scripts.ARCHIVE_REMOVE). So a crash anywhere leaves each bundle in Redis, in the
archive, or briefly in both (the next pass writes it again, harmlessly, and removes it), never
in neither. A bundle touched between the read and the removal (a drift finding, a cancel) is
kept, and archived again at a later pass if it is still due.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adapters.archive import BundleArchive
from adapters.store import BundleStore
from process_manager.bundle import FINAL


@dataclass
class ArchivePass:
    due: int = 0  # settled past retention, looked at
    written: int = 0  # committed to the archive
    removed: int = 0  # then removed from Redis
    kept: int = 0  # changed in between: left in Redis for a later pass
    batches: int = 0

    def add(self, other: ArchivePass) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def archive_batch(
    store: BundleStore, archive: BundleArchive, now: float, retention_s: float, batch: int
) -> ArchivePass:
    """One batch: at most `batch` bundles that settled by `now - retention_s`."""
    ids = store.due_for_archive(now - retention_s, batch)
    bundles = [b for b in store.snapshot(ids) if b.status in FINAL]
    done = ArchivePass(due=len(ids), batches=1)
    if not bundles:
        return done
    # Durable in the archive before anything leaves Redis (ArchiveUnavailable: nothing does).
    done.written = archive.put_many(bundles)
    results = store.remove_archived(bundles)
    done.removed = sum(1 for r in results if r in (1, 2))
    done.kept = sum(1 for r in results if r == 0)
    return done


def archive_due(
    store: BundleStore,
    archive: BundleArchive,
    now: float,
    retention_s: float,
    batch: int,
    max_batches: int = 100,
) -> ArchivePass:
    """Batches until nothing more is due (or `max_batches`: the rest is for the next run)."""
    total = ArchivePass()
    for _ in range(max_batches):
        done = archive_batch(store, archive, now, retention_s, batch)
        total.add(done)
        if done.due < batch or done.removed == 0:
            break
    return total

"""Retention: beat moves bundles settled more than RETENTION_S ago to the archive
(`vip_bundle.archive`, queue vip-bundles.compensation, every ARCHIVE_EVERY_S), and the
clients that read through both stores (`archive()`, `finder()`), made on first use in each
process and anew after a fork.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import cache

from celery.signals import worker_process_init

from adapters import clock
from adapters.archive import BundleArchive
from adapters.archiver import ArchivePass, archive_due
from adapters.finder import BundleFinder
from adapters.settings import get_settings
from tasks.celery_app import app, store
from tasks.steps import log


@cache
def archive() -> BundleArchive | None:
    """The archive at ARCHIVE_URL, or None when it is not set (nothing leaves Redis)."""
    url = get_settings().archive_url
    return BundleArchive(url.get_secret_value()) if url is not None else None


@cache
def finder() -> BundleFinder:
    return BundleFinder(store(), archive())


@worker_process_init.connect
def _fresh_archive_after_fork(**_: object) -> None:
    # A pool's connections and threads must not be shared with the parent across a fork.
    archive.cache_clear()
    finder.cache_clear()


def archive_now(now: float | None = None) -> ArchivePass | None:
    """Archive what is due now (None without ARCHIVE_URL)."""
    s, target = get_settings(), archive()
    if target is None:
        return None
    return archive_due(
        store(), target, clock.now() if now is None else now, s.retention_s, s.archive_batch
    )


@app.task(name="vip_bundle.archive", ignore_result=True)
def archive_settled() -> dict[str, int]:
    """One periodic pass; a backlog is worked off batch by batch, run after run."""
    done = archive_now()
    if done is None:
        return {"archived": 0}
    if done.removed or done.kept:
        log.info("archive: %s", asdict(done))
    return asdict(done)

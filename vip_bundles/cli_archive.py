"""`vip-bundles archive init|run`, and the memory lines of `vip-bundles stats`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

archive_cli = typer.Typer(
    help="The archive of settled bundles (PostgreSQL at ARCHIVE_URL).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _archive_or_exit() -> Any:
    from adapters.connection_check import ConnectionCheckFailed, check, probe_archive
    from adapters.settings import get_settings
    from tasks.archive import archive
    from tasks.connections import refused

    target = archive()
    url = get_settings().archive_url
    if target is None or url is None:
        sys.stderr.write("archive: ARCHIVE_URL is not set (nothing leaves Redis without it)\n")
        raise typer.Exit(2)
    try:  # once, before the pool (which would retry a bad certificate or password for 10 s)
        check("archive (ARCHIVE_URL)", probe_archive(url.get_secret_value()))
    except ConnectionCheckFailed as exc:
        if not refused(exc.__context__):  # a server that is down: said by the command itself
            sys.stderr.write(f"vip-bundles: {exc}\n")
            raise typer.Exit(2) from None
    return target


@archive_cli.command("init")
def init() -> None:
    """Create or upgrade the archive's tables (running it twice is harmless)."""
    from adapters.archive import ArchiveUnavailable

    target = _archive_or_exit()
    try:
        applied = target.init()
        version = target.schema_version()
    except ArchiveUnavailable as exc:
        sys.stderr.write(f"{exc}: is PostgreSQL at ARCHIVE_URL up?\n")
        raise typer.Exit(2) from None
    done = f"applied {', '.join(map(str, applied))}" if applied else "already up to date"
    sys.stdout.write(f"archive schema version {version} ({done})\n")


@archive_cli.command("run")
def run(
    batch: Annotated[int | None, typer.Option(min=1, help="default: ARCHIVE_BATCH")] = None,
) -> None:
    """Archive what is due now (settled more than RETENTION_S ago); prints how many."""
    from adapters import clock
    from adapters.archive import ArchiveUnavailable
    from adapters.archiver import archive_due
    from adapters.settings import get_settings
    from tasks.celery_app import store

    s, target = get_settings(), _archive_or_exit()
    try:
        done = archive_due(
            store(), target, clock.now(), s.retention_s, batch or s.archive_batch, 10**6
        )
    except ArchiveUnavailable as exc:
        sys.stderr.write(f"{exc}: nothing was removed from Redis\n")
        raise typer.Exit(2) from None
    kept = f" ({done.kept} changed meanwhile, kept in Redis)" if done.kept else ""
    sys.stdout.write(f"archived {done.removed} bundles{kept}\n")


def memory_lines(st: Any) -> str:
    """Redis memory, what settled bundles hold of it, and whether anything leaves Redis."""
    from vip_bundles.memory_view import memory_view

    return "\n".join(memory_view(st)["lines"])

"""The archive of settled bundles: PostgreSQL (psycopg 3 with a connection pool).

A second store behind the same small read interface the Redis store offers (`get`, `many`,
`search`, `list`, `count`, `settled`), so that `adapters/finder.py` can ask both the same
questions. One table, `bundles` (adapters/archive_migrations/): the document as JSONB, its
history and drift findings, and an index for each way the doors search. Writes are upserts
keyed by the bundle id that never replace a newer version with an older one, so archiving
the same bundle twice (a second pass after a crash) is harmless.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from process_manager.bundle import FINAL, Bundle, Status
from process_manager.versions import NewerSchema

MAX_SEARCH = 500  # matches fetched per searched field, as in the Redis store
MIGRATIONS = "adapters.archive_migrations"
# Serialises `init` between processes that run it at once (any fixed 64-bit number).
MIGRATION_LOCK = 0x76697062756E646C

_COLUMNS = (
    "vip_bundle_id, booking_id, customer_email, correlation_id, tenant, status, settled_at, "
    "archived_at, version, doc, history, drift, starts"
)


class ArchiveUnavailable(RuntimeError):
    """The archive could not be reached or refused the write (nothing was removed from Redis)."""


class BundleArchive:
    """Settled bundles in PostgreSQL. Connections come from a pool opened on first use."""

    def __init__(self, url: str, max_size: int = 4, timeout_s: float = 10.0):
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            open=False,
            kwargs={"connect_timeout": max(int(timeout_s), 1)},
        )
        self._opened = False

    def _conn(self) -> Any:
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True
        return self._pool.connection()

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with _unavailable(), self._conn() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    # --- schema ---
    def init(self) -> list[int]:
        """Create or upgrade the tables: apply the migrations not applied yet, in order, in one
        transaction with their records in schema_version (under a lock: two at once are safe).
        Returns the versions applied (empty: up to date)."""
        applied: list[int] = []
        with _unavailable(), self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_version")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        rows = self._rows("SELECT coalesce(max(version), 0) AS v FROM schema_version")
        return int(rows[0]["v"])

    # --- writes ---
    def put_many(self, bundles: Iterable[Bundle]) -> int:
        """Write these bundles in one committed transaction (returns when it is durable).

        A row holding a newer version of a bundle is kept; a restored row is replaced (the
        bundle settled again and is archived anew)."""
        rows = [_row(b) for b in bundles]
        if not rows:
            return 0
        # The document goes as one JSON text; PostgreSQL splits history and drift off it.
        sql = (
            f"INSERT INTO bundles ({_COLUMNS}) SELECT %s, %s, %s, %s, %s, %s, %s, now(), %s,"
            " d - 'history' - 'drift', d -> 'history', d -> 'drift', %s::jsonb"
            " FROM (SELECT %s::jsonb AS d) AS src "
            "ON CONFLICT (vip_bundle_id) DO UPDATE SET status = EXCLUDED.status,"
            " settled_at = EXCLUDED.settled_at, archived_at = EXCLUDED.archived_at,"
            " restored_at = NULL, version = EXCLUDED.version, doc = EXCLUDED.doc,"
            " history = EXCLUDED.history, drift = EXCLUDED.drift, starts = EXCLUDED.starts,"
            " tenant = EXCLUDED.tenant"
            " WHERE bundles.version <= EXCLUDED.version OR bundles.restored_at IS NOT NULL"
        )
        with _unavailable(), self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, rows)
        return len(rows)

    def mark_restored(self, bundle_id: str) -> None:
        """The bundle is live in Redis again: lists and searches leave this row out."""
        with _unavailable(), self._conn() as conn:
            conn.execute(
                "UPDATE bundles SET restored_at = now() WHERE vip_bundle_id = %s", (bundle_id,)
            )

    # --- reads: the store's interface ---
    def get(self, bundle_id: str) -> Bundle | None:
        """The archived bundle, restored rows included (the finder asks Redis first)."""
        rows = self._rows(f"SELECT {_COLUMNS} FROM bundles WHERE vip_bundle_id = %s", (bundle_id,))
        return _bundle(rows[0]) if rows else None

    def many(self, ids: Sequence[str]) -> list[Bundle]:
        """The archived bundles with these ids, in the order asked."""
        if not ids:
            return []
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM bundles WHERE vip_bundle_id = ANY(%s)", (list(ids),)
        )
        by_id = {b.vip_bundle_id: b for b in _readable(rows)}
        return [by_id[i] for i in ids if i in by_id]

    def search(self, text: str) -> list[Bundle]:
        """Archived bundles whose id, booking id, customer email (any case) or correlation id
        is `text`, most recently settled first."""
        text = text.strip()
        if not text:
            return []
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM bundles WHERE restored_at IS NULL AND ("
            " vip_bundle_id = %(t)s OR booking_id = %(t)s OR customer_email = %(email)s"
            " OR correlation_id = %(t)s) ORDER BY settled_at DESC LIMIT %(n)s",
            {"t": text, "email": text.lower(), "n": 3 * MAX_SEARCH},
        )
        return _readable(rows)

    def list(
        self, status: Status, offset: int = 0, limit: int = 50, tenant: str | None = None
    ) -> list[Bundle]:
        """Archived bundles in `status` (of `tenant` only, when given), most recently settled
        first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM bundles WHERE status = %s AND restored_at IS NULL"
            " AND (%s::text IS NULL OR tenant = %s) ORDER BY settled_at DESC OFFSET %s LIMIT %s",
            (status.value, tenant, tenant, offset, limit),
        )
        return _readable(rows)

    def count(self, status: Status, tenant: str | None = None) -> int:
        rows = self._rows(
            "SELECT count(*) AS n FROM bundles WHERE status = %s AND restored_at IS NULL"
            " AND (%s::text IS NULL OR tenant = %s)",
            (status.value, tenant, tenant),
        )
        return int(rows[0]["n"])

    def counts(self) -> dict[Status, int]:
        rows = self._rows(
            "SELECT status, count(*) AS n FROM bundles WHERE restored_at IS NULL GROUP BY status"
        )
        found = {r["status"]: int(r["n"]) for r in rows}
        return {s: found.get(s.value, 0) for s in FINAL}

    def settled(
        self,
        after: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[tuple[str, float]]:
        """(id, settle time) of archived bundles settled in (after, until], oldest first (or,
        with `newest`, the newest `limit` of them, still oldest first): the audit's walk."""
        rows = self._rows(
            "SELECT vip_bundle_id, extract(epoch FROM settled_at)::float8 AS at FROM bundles"
            " WHERE restored_at IS NULL"
            " AND (%(after)s::float8 IS NULL OR settled_at > to_timestamp(%(after)s))"
            " AND (%(until)s::float8 IS NULL OR settled_at <= to_timestamp(%(until)s))"
            f" ORDER BY settled_at {'DESC' if newest else 'ASC'} LIMIT %(n)s",
            {"after": after, "until": until, "n": limit},
        )
        found = [(r["vip_bundle_id"], float(r["at"])) for r in rows]
        return sorted(found, key=lambda row: row[1])


@contextmanager
def _unavailable() -> Iterator[None]:
    """Storage errors become the archive's own (no URL or password in the message)."""
    try:
        yield
    except psycopg.errors.UndefinedTable:
        raise ArchiveUnavailable(
            "archive: its tables are missing (run `vip-bundles archive init`)"
        ) from None
    except (psycopg.Error, PoolTimeout) as exc:
        raise ArchiveUnavailable(f"archive: {type(exc).__name__}") from None


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration shipped, in order (`NNN_name.sql`)."""
    found = []
    for entry in resources.files(MIGRATIONS).iterdir():
        if match := re.fullmatch(r"(\d+)_(\w+)\.sql", entry.name):
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


def _row(bundle: Bundle) -> tuple[Any, ...]:
    if bundle.status not in FINAL:
        raise ValueError(f"bundle {bundle.vip_bundle_id}: only settled bundles are archived")
    return (
        bundle.vip_bundle_id,
        bundle.booking_id,
        bundle.customer_email.strip().lower(),
        bundle.correlation_id,
        bundle.tenant,
        bundle.status.value,
        bundle.status_since(),
        bundle.version,
        json.dumps(bundle.starts),
        bundle.model_dump_json(),
    )


def _bundle(row: dict[str, Any]) -> Bundle:
    doc = {**row["doc"], "history": row["history"], "drift": row["drift"]}
    bundle = Bundle.from_document(doc)  # NewerSchema: a newer release archived it
    archived_at: datetime = row["archived_at"].astimezone(UTC)
    return bundle.model_copy(update={"starts": dict(row["starts"]), "archived_at": archived_at})


def _readable(rows: Iterable[dict[str, Any]]) -> list[Bundle]:
    """The rows this release reads; a newer release's are left to its own doors."""
    found = []
    for row in rows:
        try:
            found.append(_bundle(row))
        except NewerSchema:
            continue
    return found


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)

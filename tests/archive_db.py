"""A PostgreSQL database of its own for each test run (the archive's), dropped at the end.

Runs are told apart by Redis database number; the archive gets a database named after it
(`vip_bundles_test_<redis db>_<random>`), created with its tables, and dropped (connections
forced out) when the run ends. Without a PostgreSQL answering, archive tests skip.
"""

from __future__ import annotations

import os
import uuid

import psycopg

SERVER = os.environ.get("TEST_ARCHIVE_SERVER", "postgresql://postgres@127.0.0.1:5432")


def _admin() -> psycopg.Connection:
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=3)


def claim(redis_db: int) -> str | None:
    """A fresh, initialised archive database's URL, or None without a PostgreSQL."""
    name = f"vip_bundles_test_{redis_db}_{uuid.uuid4().hex[:8]}"
    try:
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        return None
    url = f"{SERVER}/{name}"
    from adapters.archive import BundleArchive

    archive = BundleArchive(url)
    archive.init()  # what `vip-bundles archive init` does
    archive.close()
    return url


def drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    try:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.OperationalError:
        pass

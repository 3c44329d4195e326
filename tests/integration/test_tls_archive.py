"""The archive on PostgreSQL over TLS with `sslmode=verify-full` (libpq's own settings: in the
URL, or PGSSLROOTCERT), against a server of the test's own (tests/tls_postgres.py): a password
user, TLS only. A wrong CA, a certificate for another host or a wrong password stops the
process at start in one line naming ARCHIVE_URL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.archive import BundleArchive
from tests.tls import CA
from tests.tls_postgres import TLSPostgres, tls_postgres
from vip_bundles import local_stack


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pg-tls"), "archive CA")


@pytest.fixture(scope="module")
def pg(ca: CA) -> Iterator[TLSPostgres]:
    with tls_postgres(ca) as server:
        yield server


def vip_bundles(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", *args],
        env=local_stack.celery_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_archive_over_tls_with_verify_full(pg: TLSPostgres, ca: CA):
    out = vip_bundles("archive", "init", ARCHIVE_URL=pg.url())
    assert out.returncode == 0, out.stderr
    assert "archive schema version" in out.stdout
    archive = BundleArchive(pg.url())
    try:
        assert archive.schema_version() >= 1
    finally:
        archive.close()
    with psycopg.connect(pg.url()) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)
    # libpq's environment variable instead of sslrootcert in the URL
    short = pg.url().split("&sslrootcert=")[0]
    out = vip_bundles("archive", "init", ARCHIVE_URL=short, PGSSLROOTCERT=str(ca.cert))
    assert out.returncode == 0, out.stderr


@pytest.mark.slow  # a second PostgreSQL cluster and a worker: ~15 s
def test_a_bad_certificate_or_password_stops_at_start_in_one_line(
    pg: TLSPostgres, ca: CA, tmp_path: Path
):
    other = CA(tmp_path, "another CA")
    with tls_postgres(ca, server=ca.issue("pg-elsewhere", hosts=("pg.elsewhere",))) as elsewhere:
        cases = {
            pg.url(sslrootcert=other.cert): "SSL error: certificate verify failed",
            pg.url().replace(":pg-password@", ":wrong-password@"): (
                'password authentication failed for user "vip"'
            ),
            elsewhere.url(): 'server certificate for "pg.elsewhere" does not match host name',
        }
        for url, cause in cases.items():
            out = vip_bundles("archive", "init", ARCHIVE_URL=url)
            assert out.returncode == 2 and cause in out.stderr.strip()
            assert out.stderr.strip().startswith("vip-bundles: archive (ARCHIVE_URL): ")
            assert len(out.stderr.strip().splitlines()) == 1
            assert "pg-password" not in out.stderr and "wrong-password" not in out.stderr
        for url, cause in list(cases.items())[:1]:  # a worker says the same at its start
            worker = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"],
                env=local_stack.celery_env(ARCHIVE_URL=url),
                capture_output=True,
                text=True,
                timeout=60,
            )
            line = worker.stderr.strip().splitlines()[-1]
            assert worker.returncode == 1, worker.stderr[-2000:]
            assert line.startswith("vip-bundles: cannot start: archive (ARCHIVE_URL): "), line
            assert cause in line
            assert "pg-password" not in worker.stderr

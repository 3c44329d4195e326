"""A PostgreSQL server of the test's own that takes TLS connections only, with a password user.

`initdb` runs as the `postgres` user in a directory of its own (the machine's server on 5432
has no TLS and is not touched); `ssl=on` with a certificate from the test's CA
(tests/tls.py); `pg_hba.conf` accepts `hostssl` with scram-sha-256 passwords and rejects
anything else over TCP. The URL is libpq's own form: `sslmode=verify-full&sslrootcert=...`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.needs import missing
from tests.tls import CA, Pair
from vip_bundles import local_stack


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@dataclass
class TLSPostgres:
    port: int
    ca: CA
    user: str
    password: str
    database: str
    workdir: Path

    def url(self, host: str = "localhost", sslrootcert: Path | None = None) -> str:
        return (
            f"postgresql://{self.user}:{self.password}@{host}:{self.port}/{self.database}"
            f"?sslmode=verify-full&sslrootcert={sslrootcert or self.ca.cert}"
        )


def _as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@contextmanager
def tls_postgres(
    ca: CA,
    user: str = "vip",
    password: str = "pg-password",
    database: str = "vip_bundles",
    server: Pair | None = None,
) -> Iterator[TLSPostgres]:
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not (initdb and pg_ctl and shutil.which("runuser")):
        missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt: postgresql)")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        missing("no `postgres` user to run initdb as (apt: postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="vip-bundles-tls-pg-"))
    os.chmod(workdir, 0o755)
    data = workdir / "data"
    server = server or ca.issue("postgres-server")
    for source, name in ((server.cert, "server.crt"), (server.key, "server.key")):
        shutil.copy(source, workdir / name)
        os.chown(workdir / name, owner.pw_uid, owner.pw_gid)
    os.chmod(workdir / "server.key", 0o600)  # PostgreSQL refuses a key others can read
    os.chown(workdir, owner.pw_uid, owner.pw_gid)
    port = local_stack.free_port()
    try:
        _as_postgres(initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust", "-E", "UTF8")
        (data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 0.0.0.0/0 reject\n"
        )
        options = (
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 -c ssl=on "
            f"-c ssl_cert_file={workdir / 'server.crt'} -c ssl_key_file={workdir / 'server.key'} "
            "-c fsync=off -c shared_buffers=16MB"
        )
        _as_postgres(
            pg_ctl, "-D", str(data), "-o", options, "-l", str(workdir / "log"), "-w", "start"
        )
        psql = [
            "psql",
            "-h",
            str(workdir),
            "-p",
            str(port),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        _as_postgres(
            *psql,
            "-c",
            f"CREATE USER {user} PASSWORD '{password}'",
            "-c",
            f"CREATE DATABASE {database} OWNER {user}",
        )
        yield TLSPostgres(port, ca, user, password, database, workdir)
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    pg_ctl,
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(workdir, ignore_errors=True)

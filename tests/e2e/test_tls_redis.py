"""Redis over TLS, as a user with the README's ACL rules, the `default` user off.

Each test starts a TLS-only `redis-server` of its own (tests/tls_redis.py) with a CA made at
test time, and runs the product's processes against it with `REDIS_URL` in redis-py's and
Celery's standard form (`rediss://user:password@host:port/db?ssl_cert_reqs=required&...`): a
worker, beat, the HTTP door and the CLI. Bad certificates and credentials end a process at
start with one line naming the connection and the cause.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from partner_simulator.server import SimulatorServer
from tests.e2e.api_server import start_door
from tests.e2e.test_outsider_doors import contract_door_line
from tests.helpers import book_args, cli_in, request
from tests.outsider import Outsider, outsider
from tests.tls import CA
from tests.tls_redis import TLSRedis, tls_redis
from vip_bundles import local_stack

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# The product's user, exactly as the README gives it (its name and password included).
ACL_LINE = next(line for line in README.splitlines() if line.startswith("user vip-bundles on "))
USER, PASSWORD = "vip-bundles", "redis-password"
API_KEY = "k-tls-" + "7" * 40


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Outsider:
    return outsider(tmp_path_factory.mktemp("outsider"))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("tls"))


def env_for(redis_url: str, simulator: SimulatorServer, **more: str) -> dict[str, str]:
    env = local_stack.celery_env(REDIS_URL=redis_url, GATEWAY_URL=simulator.url, **more)
    env.pop("ARCHIVE_URL", None)  # the archive over TLS has a test of its own
    return env


def start_worker_on(server_url: str, env: dict[str, str], logdir: Path) -> local_stack.Worker:
    control = Celery(broker=server_url, backend=server_url)
    return local_stack.start_worker(
        env, pool="threads", concurrency=4, logdir=logdir, control_app=control
    )


@pytest.mark.slow  # a worker, beat, the HTTP door, the CLI and an outside caller: ~15 s
def test_the_saga_runs_over_tls_under_exactly_the_readmes_acl(
    ca: CA, simulator: SimulatorServer, tmp_path: Path, caller: Outsider
):
    with tls_redis(ca, {}, extra=[ACL_LINE]) as server:
        url = server.url(USER, PASSWORD, db=0)  # the README's channel rule names database 0
        env = env_for(url, simulator, RECONCILE_EVERY_S="1", AUDIT_EVERY_S="1")
        worker = start_worker_on(url, env, tmp_path)
        beat = local_stack.start_beat(env, tmp_path)
        door = start_door(tmp_path, {**env, "API_KEYS": f"{API_KEY}:book+read+operate+metrics"})
        try:
            out = cli_in(env, *book_args(request()), "--wait")  # the CLI door
            assert out.returncode == 0, out.stderr
            assert re.search(r"[0-9a-f-]{36}: finalized", out.stdout), out.stdout
            with door.client(API_KEY) as http:  # the HTTP door
                made = http.post("/book-vip-bundle", json=request())
                assert made.status_code == 201, made.text
                bundle_id = made.json()["vip_bundle_id"]
                deadline = time.monotonic() + 20
                while http.get(f"/vip-bundles/{bundle_id}").json()["status"] != "finalized":
                    assert time.monotonic() < deadline, "not finalized over TLS"
                    time.sleep(0.1)
                assert http.get("/metrics").status_code == 200
                assert http.get("/dashboard.json").status_code == 200
            assert cli_in(env, "stats").returncode == 0
            # Another service, with stock Celery and nothing of ours: the same URL.
            outside_id = str(uuid.uuid4())
            prelude = (
                "import os\nfrom celery import Celery\n"
                'REDIS_URL = os.environ["REDIS_URL"]\n'
                f"request = {json.dumps(request(vip_bundle_id=outside_id))}\n"
            )
            caller.run(prelude + contract_door_line(), url)
            out = cli_in(env, "status", outside_id)
            assert out.returncode == 0 and "finalized" in out.stdout, out.stdout + out.stderr
            time.sleep(2)  # beat's reconciler and audit run (every second here)
        finally:
            door.stop()
            local_stack.stop_process(beat)
            worker.stop()
        denied = server.admin().acl_log()
        assert denied == [], f"the README's ACL refused: {denied}"
        log = worker.logfile.read_text()
        assert "vip_bundle.audit" in log and "vip_bundle.reconcile" in log
        assert "NOPERM" not in log and "Traceback" not in log


def test_client_certificates_when_the_server_requires_them(
    ca: CA, simulator: SimulatorServer, tmp_path: Path
):
    with tls_redis(ca, {USER: (PASSWORD, "~* &* +@all")}, auth_clients="yes") as server:
        url = server.url(USER, PASSWORD, db=1)  # with ssl_certfile and ssl_keyfile
        env = env_for(url, simulator)
        worker = start_worker_on(url, env, tmp_path)
        try:
            out = cli_in(env, *book_args(request()), "--wait")
            assert out.returncode == 0, out.stderr
            assert "finalized" in out.stdout
        finally:
            worker.stop()
        # Without one, the server ends the handshake: said so, in one line.
        no_cert = env_for(server.url(USER, PASSWORD, db=1, client_cert=False), simulator)
        out = cli_in(no_cert, "stats")
        assert out.returncode == 1
        assert out.stderr.strip() == (
            "vip-bundles: Redis (REDIS_URL): TLS: the server ended the handshake (does it "
            "require a client certificate?)"
        )


def test_an_optional_client_certificate_and_the_short_rediss_url(
    ca: CA, simulator: SimulatorServer
):
    """`--tls-auth-clients optional`: with or without one. And `rediss://` with no
    ssl_cert_reqs is verified (`required`), not refused as Celery alone would."""
    with tls_redis(ca, {USER: (PASSWORD, "~* &* +@all")}, auth_clients="optional") as server:
        for url in (
            server.url(USER, PASSWORD, 1),
            server.url(USER, PASSWORD, 1, client_cert=False),
        ):
            out = cli_in(env_for(url, simulator), "stats")
            assert out.returncode == 0, out.stderr
        short = server.url(USER, PASSWORD, 1, client_cert=False).replace(
            "ssl_cert_reqs=required&", ""
        )
        done = subprocess.run(
            [sys.executable, "-c", "import celeryconfig; print(celeryconfig.broker_url)"],
            env=env_for(short, simulator),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.stdout.strip().endswith("&ssl_cert_reqs=required"), done.stderr
        assert cli_in(env_for(short, simulator), "stats").returncode == 0
        # ... against the system's CAs when it names none: this server's CA is not one.
        bare = f"rediss://{USER}:{PASSWORD}@localhost:{server.port}/1"
        out = cli_in(env_for(bare, simulator), "stats")
        assert out.returncode == 1 and "certificate is not trusted" in out.stderr


@pytest.fixture(scope="module")
def servers(ca: CA) -> Iterator[dict[str, TLSRedis]]:
    """A good server, one with an expired certificate, one with another host's name."""
    users = {USER: (PASSWORD, "~* &* +@all"), "narrow": ("narrow-password", "~* &* +@all -exists")}
    good = tls_redis(ca, users)
    expired = tls_redis(ca, users, server=ca.issue("expired", expired=True))
    elsewhere = tls_redis(ca, users, server=ca.issue("elsewhere", hosts=("redis.elsewhere",)))
    with good as g, expired as e, elsewhere as w:
        yield {"good": g, "expired": e, "elsewhere": w}


BAD = {
    "wrong CA": (
        "good",
        {"ca": "other"},
        "TLS: the server's certificate is not trusted (self-signed certificate in certificate "
        "chain)",
    ),
    "expired certificate": (
        "expired",
        {},
        "TLS: the server's certificate is not trusted (certificate has expired)",
    ),
    "another host's certificate": (
        "elsewhere",
        {},
        "TLS: the server's certificate is not trusted (Hostname mismatch, certificate is not "
        "valid for 'localhost'.)",
    ),
    "wrong password": (
        "good",
        {"password": "not-the-password"},
        "authentication refused (wrong user or password, or the user is disabled)",
    ),
    "missing ACL permission": (
        "good",
        {"user": "narrow"},
        "permission refused by the server's ACL (this user has no permissions to run the "
        "'exists' command)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_certificate_or_credential_stops_the_worker_at_start_in_one_line(
    case: str, ca: CA, servers: dict[str, TLSRedis], simulator: SimulatorServer, tmp_path: Path
):
    which, change, expected = BAD[case]
    server = servers[which]
    user = change.get("user", USER)
    password = change.get("password", "narrow-password" if user == "narrow" else PASSWORD)
    ca_file = CA(tmp_path, "another CA").cert if change.get("ca") else None
    url = server.url(user, password, db=1, ca_file=ca_file)
    env = env_for(url, simulator)
    started = time.monotonic()
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks",
            "worker",
            "-P",
            "solo",
            "-f",
            str(tmp_path / "w.log"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 1
    assert time.monotonic() - started < 30  # no retry loop
    line = f"vip-bundles: cannot start: Redis (REDIS_URL): {expected}"
    assert worker.stderr.strip().splitlines()[-1] == line
    assert password not in worker.stderr + worker.stdout
    if case == "wrong password":  # beat and the other doors say the same
        beat = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(tmp_path / "s")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert beat.returncode == 1 and beat.stderr.strip().splitlines()[-1] == line
        cli = cli_in(env, "status", "00000000-0000-0000-0000-000000000000")
        assert (cli.returncode, cli.stderr.strip()) == (
            1,
            f"vip-bundles: Redis (REDIS_URL): {expected}",
        )
        api = cli_in(env, "api", "--port", str(local_stack.free_port()))
        assert api.returncode == 2
        assert api.stdout.strip() == f"vip-bundles api: Redis (REDIS_URL): {expected}"
        assert password not in cli.stderr + api.stdout + api.stderr

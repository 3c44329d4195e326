"""The README's production section, run: its TLS and credential lines as written.

The `export` lines are taken from the README and run by `bash` with only the hosts and the
certificate directory substituted (`redis.internal:6380` -> a TLS redis-server of the test's
own with the README's ACL user, `pg.internal:5432` -> a TLS PostgreSQL with the README's
user, `gateway.internal` -> the partner simulator over HTTPS asking for a client certificate,
`/etc/vip-bundles/tls/` -> the test's CA and certificates). The servers are given the
README's own users and passwords, so a line that does not work fails here. The RabbitMQ lines
run in tests/e2e/test_tls_rabbitmq.py (a RabbitMQ node of its own is slow to start).
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from partner_simulator.server import SimulatorServer, tls_options
from tests.helpers import book_args, cli_in, request
from tests.tls import CA
from tests.tls_postgres import tls_postgres
from tests.tls_redis import tls_redis
from vip_bundles import local_stack

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PRODUCTION = README.split("## Running it as in production", 1)[1]
BLOCK = re.search(r"```bash\n(.*?)```", PRODUCTION, flags=re.S).group(1)  # type: ignore[union-attr]
SECRET_FILES = re.search(r"```bash\n(\s*export REDIS_URL_FILE.*?)```", PRODUCTION, flags=re.S)
ACL_LINE = next(line for line in README.splitlines() if line.startswith("user vip-bundles on "))
# The lines this test runs; the broker's run against RabbitMQ (slow).
TLS_AND_CREDENTIALS = (
    "REDIS_URL",
    "ARCHIVE_URL",
    "GATEWAY_URL",
    "PARTNER_CA_FILE",
    "PARTNER_CERT_FILE",
    "PARTNER_KEY_FILE",
    "API_KEYS",
)
BROKER_LINES = ("BROKER_URL", "BROKER_CA_FILE")


def export_lines(block: str, names: tuple[str, ...]) -> list[str]:
    found = []
    for line in block.splitlines():
        match = re.match(r"\s*export (\w+)=", line)
        if match and match.group(1) in names:
            found.append(line.strip())
    assert {re.match(r"export (\w+)=", line).group(1) for line in found} == set(names)  # type: ignore[union-attr]
    return found


def run_exports(lines: list[str], hosts: dict[str, str], tls_dir: Path) -> dict[str, str]:
    """What `bash` makes of the lines (quoting, comments), with the test's hosts and files."""
    script = "\n".join(lines)
    for theirs, ours in hosts.items():
        script = script.replace(theirs, ours)
    script = script.replace("/etc/vip-bundles/tls/", f"{tls_dir}/")
    names = [re.match(r"export (\w+)=", line).group(1) for line in lines]  # type: ignore[union-attr]
    dump = "import json, os, sys; print(json.dumps({n: os.environ[n] for n in sys.argv[1:]}))"
    out = subprocess.run(
        ["bash", "-c", f'{script}\nexec "$0" -c "$1" "${{@:2}}"', sys.executable, dump, *names],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"{script}\n{out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def readme_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, Path]:
    """A CA, and the README's /etc/vip-bundles/tls/: ca.pem, client.crt, client.key."""
    directory = tmp_path_factory.mktemp("etc-vip-bundles-tls")
    ca = CA(directory / "ca", "readme CA")
    client = ca.issue("vip-bundles", client=True)
    shutil.copy(ca.cert, directory / "ca.pem")
    shutil.copy(client.cert, directory / "client.crt")
    shutil.copy(client.key, directory / "client.key")
    return ca, directory


@pytest.fixture(scope="module")
def ca(readme_tls: tuple[CA, Path]) -> CA:
    return readme_tls[0]


@pytest.fixture(scope="module")
def tls_dir(readme_tls: tuple[CA, Path]) -> Path:
    return readme_tls[1]


@pytest.fixture(scope="module")
def https_gateway(ca: CA, tls_dir: Path) -> Iterator[SimulatorServer]:
    server = ca.issue("gateway")
    control = ssl.create_default_context(cafile=str(ca.cert))
    control.load_cert_chain(str(tls_dir / "client.crt"), str(tls_dir / "client.key"))
    tls = tls_options(str(server.cert), str(server.key), str(ca.cert), "required")
    with SimulatorServer(tls=tls, client_options={"verify": control}) as sim:
        yield sim


@pytest.mark.slow  # three TLS servers, a worker, the door, Flower: ~20 s
def test_the_production_sections_tls_and_credential_lines_work_as_written(
    ca: CA, tls_dir: Path, https_gateway: SimulatorServer, tmp_path: Path
):
    with tls_redis(ca, {}, extra=[ACL_LINE]) as redis, tls_postgres(ca) as pg:
        hosts = {
            "redis.internal:6380": f"localhost:{redis.port}",
            "pg.internal:5432": f"localhost:{pg.port}",
            "https://gateway.internal": f"https://localhost:{https_gateway.port}",
        }
        env = run_exports(export_lines(BLOCK, TLS_AND_CREDENTIALS), hosts, tls_dir)
        assert env["REDIS_URL"].startswith("rediss://vip-bundles:redis-password@localhost:")
        assert "sslmode=verify-full" in env["ARCHIVE_URL"]
        env = local_stack.celery_env(**env, RETENTION_S="0")
        env.pop("BROKER_URL", None)  # "or leave unset: Redis"
        shop_key = re.search(r"(k-shop-\w+):book\+read@shop-a", env["API_KEYS"]).group(1)  # type: ignore[union-attr]

        out = vip_bundles(env, "archive", "init")  # the README's archive line, on TLS
        assert out.returncode == 0, out.stderr
        worker = local_stack.start_worker(
            env,
            pool="threads",
            concurrency=4,
            logdir=tmp_path,
            control_app=Celery(broker=env["REDIS_URL"], backend=env["REDIS_URL"]),
        )
        door = start_api(env, tmp_path)
        try:
            out = vip_bundles(env, *book_args(request()), "--wait")
            assert out.returncode == 0, out.stderr
            assert re.search(r": finalized", out.stdout), out.stdout
            with httpx.Client(
                base_url=door, headers={"Authorization": f"Bearer {shop_key}"}, timeout=20
            ) as http:
                made = http.post("/book-vip-bundle", json=request())
                assert made.status_code == 201, made.text
                bundle_id = made.json()["vip_bundle_id"]
                deadline = time.monotonic() + 20
                while http.get(f"/vip-bundles/{bundle_id}").json()["status"] != "finalized":
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            out = vip_bundles(env, "archive", "run")  # to PostgreSQL over TLS
            assert out.returncode == 0, out.stderr
            assert re.search(r"archived [1-9]\d* bundles", out.stdout), out.stdout
            assert vip_bundles(env, "status", bundle_id).returncode == 0  # read back from it
        finally:
            worker.stop()
        logged = worker.logfile.read_text() + (tmp_path / "api.log").read_text()
        assert "redis-password" not in logged and "pg-password" not in logged
        assert shop_key not in logged

        # The same secrets from files, as the README's second block says.
        assert SECRET_FILES is not None
        secrets = tmp_path / "run-secrets"
        secrets.mkdir()
        names = {"redis-url": "REDIS_URL", "archive-url": "ARCHIVE_URL", "api-keys": "API_KEYS"}
        for file, name in names.items():
            (secrets / file).write_text(env[name] + "\n")
        lines = export_lines(SECRET_FILES.group(1), tuple(f"{n}_FILE" for n in names.values()))
        from_files = run_exports(lines, {"/run/secrets/": f"{secrets}/"}, tls_dir)
        file_env = {k: v for k, v in env.items() if k not in names.values()} | from_files
        out = vip_bundles(file_env, "status", bundle_id)
        assert out.returncode == 0, out.stderr
        for args in (["--help"], ["api", "--help"], ["book", "--help"]):
            shown = vip_bundles(file_env, *args)
            assert "redis-password" not in shown.stdout + shown.stderr
        shown = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--help"],
            env=file_env,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert shown.returncode == 0 and "redis-password" not in shown.stdout + shown.stderr
        assert "pg-password" not in shown.stdout + shown.stderr
        (secrets / "redis-url.good").write_text(env["REDIS_URL"])
        # A wrong password from a file: one line, the password in neither.
        (secrets / "redis-url").write_text(env["REDIS_URL"].replace("redis-password", "wrong-pw"))
        out = vip_bundles(file_env, "stats")
        assert out.returncode == 1
        assert out.stderr.strip() == (
            "vip-bundles: Redis (REDIS_URL): authentication refused (wrong user or password, "
            "or the user is disabled)"
        )
        # Flower (the README's line, on the secrets from files) never shows one either.
        flower_port = local_stack.free_port()
        flags = ["--address=127.0.0.1", f"--port={flower_port}", "--basic-auth=ops:flower-pw"]
        flower = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "flower", *flags],
            env={**file_env, "REDIS_URL_FILE": str(secrets / "redis-url.good")},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=local_stack.die_with_parent,
        )
        _DOORS.append(flower)
        local_stack.wait_for_http(f"http://127.0.0.1:{flower_port}/metrics")
        for page in ("/", "/tasks", "/api/workers"):  # (/broker: 404 on our own transport)
            shown = httpx.get(
                f"http://127.0.0.1:{flower_port}{page}", auth=("ops", "flower-pw"), timeout=20
            )
            assert shown.status_code == 200, (page, shown.status_code)
            assert "redis-password" not in shown.text and "pg-password" not in shown.text
        # The door's pages and metrics never show a secret.
        with httpx.Client(base_url=door, headers={"Authorization": f"Bearer {shop_key}"}) as http:
            for page in ("/", "/dashboard.json", f"/vip-bundles/{bundle_id}"):
                text = http.get(page).text
                assert "redis-password" not in text and "pg-password" not in text


_DOORS: list[subprocess.Popen[bytes]] = []


def start_api(env: dict[str, str], logdir: Path) -> str:
    port = local_stack.free_port()
    with open(logdir / "api.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vip_bundles", "api", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=local_stack.die_with_parent,
        )
    _DOORS.append(proc)
    url = f"http://127.0.0.1:{port}"
    try:
        local_stack.wait_for_http(f"{url}/health")
    except TimeoutError:
        raise AssertionError((logdir / "api.log").read_text()) from None
    return url


@pytest.fixture(autouse=True)
def _stop_doors() -> Iterator[None]:
    yield
    while _DOORS:
        local_stack.stop_process(_DOORS.pop())


def vip_bundles(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli_in(env, *args, timeout=90)

"""The partners over HTTPS with a private CA, and with a client certificate (mTLS) where a
partner asks for one: the partner simulator serves HTTPS (`SimulatorServer(tls=...)`, or
`python -m partner_simulator --ssl-certfile ...`), the product is given PARTNER_CA_FILE,
PARTNER_CERT_FILE and PARTNER_KEY_FILE, and real workers run the saga through it."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from partner_simulator.server import SimulatorServer, tls_options, wait_for_health
from tests.helpers import book_args, request
from tests.tls import CA
from vip_bundles import local_stack


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("partners-tls"), "partners CA")


@pytest.fixture(scope="module")
def https_partners(ca: CA) -> Iterator[SimulatorServer]:
    """Partners that serve HTTPS and require a client certificate signed by `ca`."""
    server, ours = ca.issue("gateway"), ca.issue("our-client", client=True)
    control = ssl.create_default_context(cafile=str(ca.cert))
    control.load_cert_chain(str(ours.cert), str(ours.key))
    tls = tls_options(str(server.cert), str(server.key), str(ca.cert), "required")
    with SimulatorServer(tls=tls, client_options={"verify": control}) as sim:
        yield sim


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vip_bundles", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_the_saga_calls_the_partners_over_https_with_a_client_certificate(
    ca: CA,
    https_partners: SimulatorServer,
    claim_db: Callable[[], str],
    tmp_path: Path,
):
    assert https_partners.url.startswith("https://")
    redis_url = claim_db()
    client = ca.dir / "our-client"
    env = local_stack.celery_env(
        REDIS_URL=redis_url,
        GATEWAY_URL=https_partners.url,
        PARTNER_CA_FILE=str(ca.cert),
        PARTNER_CERT_FILE=f"{client}.crt",
        PARTNER_KEY_FILE=f"{client}.key",
    )
    worker = local_stack.start_worker(
        env, pool="threads", concurrency=4, logdir=tmp_path, control_app=Celery(broker=redis_url)
    )
    try:
        out = cli(env, *book_args(request()), "--wait")
        assert out.returncode == 0, out.stderr
        assert re.search(r": finalized", out.stdout), out.stdout
    finally:
        worker.stop()
    with https_partners.client() as control:
        calls = control.calls(path_prefix="/transportation-api")
    assert calls, "no partner call over HTTPS"

    # Without our certificate, or trusting another CA: the worker does not start, in one line.
    for change, cause in (
        (
            {"PARTNER_CERT_FILE": "", "PARTNER_KEY_FILE": ""},
            "TLS: the server hung up without answering (does it require a client certificate? "
            "PARTNER_CERT_FILE and PARTNER_KEY_FILE)",
        ),
        (
            {"PARTNER_CA_FILE": str(CA(tmp_path / "other", "other CA").cert)},
            "TLS: the server's certificate is not trusted (self-signed certificate in "
            "certificate chain)",
        ),
    ):
        bad = {**env, **change}
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"],
            env={k: v for k, v in bad.items() if v},
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 1, done.stderr[-2000:]
        assert line.startswith(f"vip-bundles: cannot start: partners (GATEWAY_URL): {cause}")


def test_the_simulator_serves_https_from_the_command_line(ca: CA):
    server = ca.issue("simulator-cli")
    port = local_stack.free_port()
    tls = ["--ssl-certfile", str(server.cert), "--ssl-keyfile", str(server.key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "partner_simulator", "--port", str(port), *tls],
        env=local_stack.celery_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"https://localhost:{port}"
        wait_for_health(
            url, 15, client_options={"verify": ssl.create_default_context(cafile=str(ca.cert))}
        )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/_sim/health")  # the system's CAs do not know ours
    finally:
        local_stack.stop_process(proc)

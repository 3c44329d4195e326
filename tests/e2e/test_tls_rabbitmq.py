"""RabbitMQ over TLS (`amqps://`, a user and vhost of its own) on a node of the test's own
(tests/tls_rabbitmq.py), with the README's broker lines as written: the product's workers and
CLI, and another service with stock Celery settings (`broker_use_ssl`). Slow: a node takes
several seconds to start."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from partner_simulator.server import SimulatorServer
from tests.e2e.test_readme_production import BLOCK, export_lines, run_exports
from tests.helpers import book_args, cli_in, request
from tests.outsider import outsider
from tests.tls import CA
from tests.tls_rabbitmq import TLSRabbit, tls_rabbitmq
from vip_bundles import local_stack

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("rabbit-tls"), "rabbit CA")


@pytest.fixture(scope="module")
def rabbit(ca: CA) -> Iterator[TLSRabbit]:
    # The README's user, password and vhost; it requires a client certificate.
    with tls_rabbitmq(ca, verify_clients=True) as node:
        yield node


def test_the_readmes_broker_lines_run_the_saga_over_amqps(
    ca: CA,
    rabbit: TLSRabbit,
    simulator: SimulatorServer,
    claim_db: Callable[[], str],
    tmp_path: Path,
):
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    shutil.copy(ca.cert, tls_dir / "ca.pem")
    client = ca.issue("vip-bundles-amqp-client", client=True)
    shutil.copy(client.cert, tls_dir / "client.crt")
    shutil.copy(client.key, tls_dir / "client.key")
    names = ("BROKER_URL", "BROKER_CA_FILE", "BROKER_CERT_FILE", "BROKER_KEY_FILE")
    lines = export_lines(BLOCK, (*names, "BROKER_QUEUE_TYPE"))
    broker = run_exports(lines, {"rabbit.internal:5671": f"localhost:{rabbit.port}"}, tls_dir)
    assert broker["BROKER_URL"] == rabbit.url()
    redis_url = claim_db()
    env = local_stack.celery_env(REDIS_URL=redis_url, GATEWAY_URL=simulator.url, **broker)
    control = Celery(broker=broker["BROKER_URL"])
    tls = {"ca_certs": str(ca.cert), "certfile": str(client.cert), "keyfile": str(client.key)}
    control.conf.broker_use_ssl = {**tls, "cert_reqs": ssl.CERT_REQUIRED}
    worker = local_stack.start_worker(
        env, pool="threads", concurrency=4, logdir=tmp_path, control_app=control
    )
    try:
        out = vip_bundles(env, *book_args(request()), "--wait")
        assert out.returncode == 0, out.stderr
        assert re.search(r": finalized", out.stdout), out.stdout

        # Another service, stock Celery: the same URL and Celery's own broker_use_ssl.
        bundle_id = str(uuid.uuid4())
        code = f"""
import ssl
from celery import Celery
app = Celery(broker={broker["BROKER_URL"]!r}, backend={redis_url!r})
app.conf.broker_use_ssl = {{**{tls!r}, "cert_reqs": ssl.CERT_REQUIRED}}
app.conf.task_create_missing_queue_type = "quorum"
request = {json.dumps(request(vip_bundle_id=bundle_id))}
print(app.send_task("vip_bundle.book", kwargs=request, queue="vip-bundles").get(timeout=60))
"""
        printed = outsider(tmp_path / "outsider").run(code, redis_url)
        assert bundle_id in printed
        out = vip_bundles(env, "status", bundle_id)
        assert out.returncode == 0, out.stderr
    finally:
        worker.stop()

    # A wrong CA or password, no client certificate: the worker does not start, in one line.
    other = CA(tmp_path / "other", "other CA")
    for change, cause in (
        (
            {"BROKER_CA_FILE": str(other.cert)},
            "TLS: the server's certificate is not trusted (self-signed certificate in "
            "certificate chain)",
        ),
        (
            {"BROKER_URL": rabbit.url(password="wrong-password")},
            "authentication refused (wrong user or password)",
        ),
        (
            {"BROKER_CERT_FILE": "", "BROKER_KEY_FILE": ""},
            "TLS: the server ended the handshake (does it require a client certificate?)",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"],
            env={k: v for k, v in {**env, **change}.items() if v},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 1, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert line == f"vip-bundles: cannot start: broker (BROKER_URL): {cause}"
        assert "rabbit-password" not in done.stderr


def vip_bundles(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli_in(env, *args, timeout=120)

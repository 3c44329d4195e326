"""A RabbitMQ node of the test's own that takes AMQP over TLS only (`amqps://`).

The machine's RabbitMQ (5672, tests/rabbitmq.py) has no TLS listener and is not touched: this
node gets its own name, ports, config, database and log directories, and Erlang cookie (HOME)
in a temporary directory, and is started from RabbitMQ's own scripts
(/usr/lib/rabbitmq/bin). Its listener: `listeners.ssl.default` with `ssl_options` from the
test's CA (tests/tls.py), the plain listener off. A user and a vhost of the test's choosing.
Starting a node takes several seconds: the tests using it are `slow`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tests.needs import missing
from tests.tls import CA
from vip_bundles import local_stack

BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class TLSRabbit:
    port: int
    node: str
    env: dict[str, str]
    user: str
    password: str
    vhost: str

    def url(self, host: str = "localhost", password: str | None = None) -> str:
        secret = quote(password if password is not None else self.password, safe="")
        return f"amqps://{self.user}:{secret}@{host}:{self.port}/{quote(self.vhost, safe='')}"

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", self.node, "-q", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


def _free_pair() -> int:
    """A port whose +20000 (the node's Erlang distribution port) is free too."""
    for _ in range(50):
        port = local_stack.free_port()
        if port < 45535:
            try:
                with __import__("socket").socket() as s:
                    s.bind(("127.0.0.1", port + 20000))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair for a RabbitMQ node")


@contextmanager
def tls_rabbitmq(
    ca: CA,
    user: str = "vip",
    password: str = "rabbit-password",
    vhost: str = "vip-bundles",
    verify_clients: bool = False,
) -> Iterator[TLSRabbit]:
    if not (BIN / "rabbitmq-server").exists():
        missing("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    work = Path(tempfile.mkdtemp(prefix="vip-bundles-tls-rabbit-"))
    server = ca.issue("rabbitmq-server")
    port, tcp = _free_pair(), _free_pair()
    node = f"viptls{uuid.uuid4().hex[:6]}@localhost"
    conf = work / "rabbitmq.conf"
    conf.write_text(
        "\n".join(
            [
                f"listeners.tcp.default = {tcp}",  # loopback only; the tests use TLS
                f"listeners.ssl.default = {port}",
                f"ssl_options.cacertfile = {ca.cert}",
                f"ssl_options.certfile = {server.cert}",
                f"ssl_options.keyfile = {server.key}",
                f"ssl_options.verify = {'verify_peer' if verify_clients else 'verify_none'}",
                f"ssl_options.fail_if_no_peer_cert = {'true' if verify_clients else 'false'}",
                "loopback_users = none",
                "log.console = false",
                "",
            ]
        )
    )
    (work / "enabled_plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(work),  # its own Erlang cookie
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(tcp),
        "RABBITMQ_DIST_PORT": str(tcp + 20000),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
        "RABBITMQ_LOG_BASE": str(work / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(work / "pid"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(work / "advanced.config"),
    }
    (work / ".erlang.cookie").write_text(uuid.uuid4().hex)
    os.chmod(work / ".erlang.cookie", 0o400)
    proc = subprocess.Popen(
        [str(BIN / "rabbitmq-server")],
        env=env,
        stdout=open(work / "server.out", "wb"),  # noqa: SIM115 (the node keeps it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=local_stack.die_with_parent,
    )
    rabbit = TLSRabbit(port, node, env, user, password, vhost)
    try:
        subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", node, "wait", "--timeout", "120", str(work / "pid")],
            env=env,
            capture_output=True,
            timeout=150,
            check=True,
        )
        rabbit.ctl("add_user", user, password)
        rabbit.ctl("add_vhost", vhost)
        rabbit.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield rabbit
    except subprocess.CalledProcessError as exc:
        log = "\n".join(p.read_text(errors="replace")[-3000:] for p in work.rglob("*.log"))
        raise RuntimeError(f"RabbitMQ node {node}: {exc.stderr}\n{log}") from None
    finally:
        subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", node, "stop"], env=env, capture_output=True, timeout=60
        )
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(0.1)
        shutil.rmtree(work, ignore_errors=True)

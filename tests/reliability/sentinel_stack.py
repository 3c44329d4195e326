"""A Redis master, its replica and three sentinels, as real processes on free 127.0.0.1 ports.

For the failover tests: each server runs in a temporary directory of its own (appendonly yes),
dies with the test process (`die_with_parent`) and is killed by `close()`. The sentinels watch
the master under `MASTER_NAME` with quorum 2 and short timeouts, so a killed master is replaced
within a few seconds. `env()` gives what every vip-bundles process needs to follow the master.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis
from celery import Celery

from adapters import redis_connection
from adapters.settings import Settings
from tests.tls import CA
from tests.tls_redis import tls_binary
from vip_bundles import local_stack

MASTER_NAME = "vip-ha"


@dataclass
class Node:
    """One redis-server (data or sentinel) on its own port and directory."""

    port: int
    workdir: Path
    args: list[str]
    password: str | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    tls: bool = False  # TLS only (the test's own client does not check the certificate)

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=local_stack.die_with_parent,
        )
        local_stack._wait(self.answers, 15, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        tls = {"ssl": True, "ssl_cert_reqs": "none", "ssl_check_hostname": False}
        return redis.Redis(
            port=self.port,
            password=self.password,
            socket_timeout=5,
            socket_connect_timeout=1,
            **(tls if self.tls else {}),
        )

    def kill(self) -> None:
        """SIGKILL: no goodbye, whatever the replica did not get yet is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            local_stack.stop_process(self.process, timeout=5)


class SentinelStack:
    def __init__(
        self,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
        tls: CA | None = None,
    ) -> None:
        """`password`: the Redis servers' (requirepass, masterauth); `sentinel_password`:
        the sentinels' own; `tls`: every node (data and sentinel) TLS only, its certificate
        from this CA, replication and the sentinels' own links over TLS too."""
        self.password, self.sentinel_password = password, sentinel_password
        self.ca = tls
        self._tls_lines: list[str] = []
        self._binary = shutil.which("redis-server") or "redis-server"
        if tls is not None:
            self._binary = tls_binary() or self._binary
            server = tls.issue("sentinel-stack")
            self._tls_lines = [
                f"tls-cert-file {server.cert}",
                f"tls-key-file {server.key}",
                f"tls-ca-cert-file {tls.cert}",
                "tls-auth-clients no",
                "tls-replication yes",
            ]
        if shutil.which("redis-server") is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self._tmp = tempfile.TemporaryDirectory(prefix="vip-bundles-sentinel-")
        self.root = Path(self._tmp.name)
        self.data: list[Node] = []
        self.sentinels: list[Node] = []
        try:
            master = self._data_node("a")
            self._data_node("b", replica_of=master.port)
            for name in ("s1", "s2", "s3"):
                self._sentinel_node(name, master.port, down_after_ms, failover_timeout_ms)
            self.wait_settled()
        except BaseException:
            self.close()
            raise

    # --- building ---
    def _data_node(self, name: str, replica_of: int | None = None) -> Node:
        workdir = self.root / name
        workdir.mkdir()
        port = local_stack.free_port()
        listen = ["--port", str(port)]
        if self.ca is not None:
            listen = ["--port", "0", "--tls-port", str(port)]
            for line in self._tls_lines:
                listen += [f"--{line.split()[0]}", line.split()[1]]
        args = [
            self._binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        node = Node(port, workdir, args, self.password, tls=self.ca is not None)
        node.start()
        self.data.append(node)
        return node

    def _sentinel_node(self, name: str, master_port: int, down_ms: int, failover_ms: int) -> Node:
        workdir = self.root / name
        workdir.mkdir()
        port = local_stack.free_port()
        conf = workdir / "sentinel.conf"
        listen = f"port {port}\n"
        if self.ca is not None:
            listen = f"port 0\ntls-port {port}\n" + "".join(f"{x}\n" for x in self._tls_lines)
        conf.write_text(
            f"{listen}bind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            + (f"sentinel auth-pass {MASTER_NAME} {self.password}\n" if self.password else "")
            + (
                f"requirepass {self.sentinel_password}\n"
                f"sentinel sentinel-pass {self.sentinel_password}\n"
                if self.sentinel_password
                else ""
            )
        )
        args = [self._binary, str(conf), "--sentinel"]
        node = Node(port, workdir, args, self.sentinel_password, tls=self.ca is not None)
        node.start()
        self.sentinels.append(node)
        return node

    # --- what processes need ---
    @property
    def sentinel_list(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def redis_url(self) -> str:
        """REDIS_URL: the database number (and password) for the master; its host is the first
        master's, so a process that ignored the sentinels would be caught talking to it."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.ca is not None:
            tls = f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca.cert}"
            return f"rediss://{auth}127.0.0.1:{self.data[0].port}/0{tls}"
        return f"redis://{auth}127.0.0.1:{self.data[0].port}/0"

    def env(self) -> dict[str, str]:
        env = {
            "REDIS_URL": self.redis_url,
            "REDIS_SENTINELS": self.sentinel_list,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
        }
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        return env

    def settings(self) -> Settings:
        return Settings(
            redis_url=self.redis_url,
            redis_sentinels=self.sentinel_list,
            redis_sentinel_master=MASTER_NAME,
            redis_failover_wait_s=60,
            redis_sentinel_password=self.sentinel_password,
        )

    def client(self) -> redis.Redis:
        """A client that follows the master, as the product's processes make it."""
        return redis_connection.redis_client(self.settings())

    def celery_app(self) -> Celery:
        """Our routes (so it reaches every queue) on the Sentinel broker and backend."""
        s = self.settings()
        url = redis_connection.celery_sentinel_url(s)
        options = redis_connection.celery_transport_options(s)
        app = Celery("vip-bundles-sentinel-test")
        app.config_from_object("celeryconfig")
        app.conf.update(
            broker_url=url,
            result_backend=url,
            broker_transport="adapters.broker:SentinelTransport",
            broker_transport_options={"visibility_timeout": 3600, **options},
            result_backend_transport_options=options,
            result_backend_always_retry=True,
            result_backend_max_retries=30,
        )
        if self.ca is not None:
            tls = redis_connection.celery_use_ssl(s)
            app.conf.update(broker_use_ssl=tls, redis_backend_use_ssl=tls)
        return app

    # --- observing and faults ---
    def master_port(self) -> int | None:
        """The master the sentinels name now (None while none answers)."""
        for s in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                addr = s.client().sentinel_get_master_addr_by_name(MASTER_NAME)
                if addr:
                    return int(addr[1])
        return None

    def node(self, port: int) -> Node:
        return next(n for n in self.data if n.port == port)

    def master(self) -> Node:
        port = self.master_port()
        assert port is not None, "no sentinel names a master"
        return self.node(port)

    def replicas_up(self, port: int) -> int:
        """Replicas connected to the server on `port` (0 if it does not answer)."""
        try:
            info = self.node(port).client().info("replication")
        except redis.RedisError:
            return 0
        return int(info.get("connected_slaves", 0)) if info.get("role") == "master" else 0

    def wait_settled(self, timeout: float = 60) -> int:
        """Until the named master answers as master with a replica in sync and every sentinel
        knows the others; the master's port."""

        def settled() -> bool:
            port = self.master_port()
            if port is None or self.replicas_up(port) < 1:
                return False
            for s in self.sentinels:
                try:
                    state = s.client().sentinel_master(MASTER_NAME)
                    replicas = s.client().sentinel_slaves(MASTER_NAME)
                except redis.RedisError:
                    return False
                if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                    return False
                if int(state["port"]) != port or not any(_in_sync(r) for r in replicas):
                    return False
            return True

        local_stack._wait(settled, timeout, "the sentinel stack to settle")
        return self.master_port() or 0

    def wait_promoted(self, old_port: int, timeout: float = 60) -> int:
        """Until a server other than `old_port` is named master and answers as one."""

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            try:
                return self.node(port).client().info("replication")["role"] == "master"
            except redis.RedisError:
                return False

        local_stack._wait(promoted, timeout, f"a master other than {old_port}")
        return self.master_port() or 0

    def failover(self) -> tuple[int, int]:
        """SENTINEL FAILOVER: promote the replica now; (old, new) master ports, once the old
        master is a replica of the new one (until then it still takes writes: a client's
        connection made before the promotion would write where nobody reads) and linked to it
        (until then the new master has no replica, and nothing waits for one)."""
        old = self.wait_settled()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        new = self.wait_promoted(old)
        local_stack._wait(lambda: self._is_replica(old), 60, f"{old} to become a replica")
        self.wait_settled()
        return old, new

    def _is_replica(self, port: int) -> bool:
        try:
            return self.node(port).client().info("replication")["role"] == "slave"
        except redis.RedisError:
            return False

    def kill_master(self) -> Node:
        """kill -9 of the master; the node, to start it again later."""
        node = self.master()
        node.kill()
        return node

    def restart(self, node: Node) -> None:
        """Start a killed server again on its port and directory (a former master comes back
        and the sentinels make it a replica of the new one)."""
        node.start()

    def close(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.stop()
        self._tmp.cleanup()


def _in_sync(replica: dict) -> bool:
    """A replica the sentinels could promote: up, linked to its master."""
    down = replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    return not down and replica.get("master-link-status") == "ok"

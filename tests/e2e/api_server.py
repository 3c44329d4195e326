"""The HTTP door for the e2e tests: served by uvicorn in a background thread (`api_server`), or
as a user starts it, `vip-bundles api` in a process of its own (`start_door`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from partner_simulator.server import bind_socket, url_for, uvicorn_config
from vip_bundles import local_stack
from vip_bundles.api import SERVER_OPTIONS, create_app


@contextmanager
def api_server(timeout: float = 15) -> Iterator[str]:
    """Serve `create_app()` on a free port; yield its base URL, stop it on exit."""
    sock = bind_socket("127.0.0.1", 0)  # bound before the thread starts: no race for the port
    url = url_for("127.0.0.1", sock.getsockname()[1])
    # Served as `vip-bundles api` serves it: the same parser, proxy headers left to the guard.
    server = uvicorn.Server(uvicorn_config(create_app(), **SERVER_OPTIONS))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="vip-bundles-api", daemon=True
    )
    thread.start()
    try:
        _wait_until_serving(url, timeout, thread)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def _wait_until_serving(url: str, timeout: float, thread: threading.Thread) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP door at {url} did not come up")
        time.sleep(0.05)


class Door:
    """`vip-bundles api` running in a process of its own."""

    def __init__(self, process: subprocess.Popen[str], url: str, port: int, log: Path) -> None:
        self.process, self.url, self.port, self.log = process, url, port, log

    def client(self, key: str | None = None, **kw: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        local_stack.stop_process(self.process)  # type: ignore[arg-type]


def start_door(logdir: Path, env: dict[str, str], *args: str) -> Door:
    """Start `vip-bundles api --port <free port> *args` with `env` (over the test settings),
    and wait until /health answers."""
    port = local_stack.free_port()
    log = logdir / f"api-{port}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vip_bundles", "api", "--port", str(port), *args],
            env=local_stack.celery_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=local_stack.die_with_parent,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        local_stack.wait_for_http(f"{url}/health")
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"vip-bundles api did not come up: {log.read_text()}") from None
    return Door(process, url, port, log)


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(port: int, data: bytes, timeout: float = 10) -> RawAnswer:
    """Send `data` as written on a fresh connection to 127.0.0.1:`port`; the first answer.

    For what an HTTP client library would refuse to send (control characters, conflicting
    framing): the server's parser is what is tested.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(body)))
    return RawAnswer(int(status_line.split()[1]), headers, body[:length])


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value.strip())
    return False

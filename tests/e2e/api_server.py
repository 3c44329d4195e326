"""The HTTP door served by a real uvicorn server in a background thread, for the e2e tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from partner_simulator.server import bind_socket, url_for, uvicorn_config
from vip_bundles.api import create_app, http_protocol


@contextmanager
def api_server(timeout: float = 15) -> Iterator[str]:
    """Serve `create_app()` on a free port; yield its base URL, stop it on exit."""
    sock = bind_socket("127.0.0.1", 0)  # bound before the thread starts: no race for the port
    url = url_for("127.0.0.1", sock.getsockname()[1])
    # The same HTTP protocol as `vip-bundles api` (control characters reach the door's checks).
    server = uvicorn.Server(uvicorn_config(create_app(), http=http_protocol()))
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

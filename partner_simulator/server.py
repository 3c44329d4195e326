"""Run the partner simulator: in a background thread, in a subprocess, and a client for /_sim."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn

from partner_simulator.app import create_app
from partner_simulator.state import DEFAULT_MAX_CALLS, SimulatorState

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Bind (and listen on) a TCP socket; port 0 picks a free port with no race for it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle + delayed ACK add ~40 ms to every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def url_for(host: str, port: int, scheme: str = "http") -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def uvicorn_config(app: Any, **overrides: Any) -> uvicorn.Config:
    # http="auto": httptools when installed, else h11. No access log: it costs at load.
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        "http": "auto",
        "timeout_graceful_shutdown": 5,
    }
    return uvicorn.Config(app, **{**options, **overrides})


def tls_options(
    certfile: str | None,
    keyfile: str | None,
    ca_certs: str | None = None,
    cert_reqs: str = "none",
) -> dict[str, Any]:
    """uvicorn's options to serve HTTPS ({} without a certificate): `cert_reqs` none,
    optional or required asks partners' callers for a client certificate signed by
    `ca_certs`."""
    if not certfile:
        return {}
    reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    options: dict[str, Any] = {"ssl_certfile": certfile, "ssl_keyfile": keyfile}
    if ca_certs:
        options["ssl_ca_certs"] = ca_certs
    options["ssl_cert_reqs"] = reqs[cert_reqs]
    return options


def wait_for_health(
    url: str,
    timeout: float = 10.0,
    alive: Callable[[], bool] | None = None,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Poll /_sim/health until it answers; fail early if `alive()` says the server died.
    `client_options`: httpx.Client's (`verify`, for HTTPS)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, **(client_options or {})) as http:
        while True:
            try:
                if http.get(f"{url}/_sim/health").json().get("ok") is True:
                    return
            except (httpx.TransportError, ValueError):
                pass
            if alive is not None and not alive():
                raise RuntimeError(f"partner simulator at {url} exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError(f"partner simulator at {url} not healthy after {timeout}s")
            time.sleep(0.02)


class SimulatorServer:
    """The simulator served by uvicorn in a daemon thread; use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: int = 0,
        max_calls: int = DEFAULT_MAX_CALLS,
        startup_timeout: float = 10.0,
        tls: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        """`tls`: uvicorn's options to serve HTTPS (ssl_certfile, ssl_keyfile, and for client
        certificates ssl_ca_certs and ssl_cert_reqs); `client_options`: httpx.Client's for
        the simulator's own controls (`verify`, and a client certificate if it asks for one)."""
        self.tls = tls or {}
        self.client_options = client_options or {}
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.app = create_app(latency_ms=latency_ms, max_calls=max_calls)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> SimulatorState:
        """The live state, for white-box assertions (read it only while no request is running)."""
        state: SimulatorState = self.app.state.simulator
        return state

    def client(self, timeout: float = 10.0) -> SimulatorClient:
        return SimulatorClient(self.url, timeout=timeout, **self.client_options)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.url = url_for(self.host, self.port, "https" if self.tls else "http")
        self._server = uvicorn.Server(uvicorn_config(self.app, **self.tls))
        # uvicorn only installs signal handlers on the main thread, so a thread is safe here.
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"partner-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        try:
            wait_for_health(
                self.url, self.startup_timeout, self._thread.is_alive, self.client_options
            )
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self

    def stop(self) -> None:
        # uvicorn closes the listening socket itself when it shuts down.
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with bind_socket(host, 0) as sock:
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """The simulator gets SIGTERM when the process that started it dies (Linux), so a killed
    benchmark or test run leaves no simulator behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_subprocess(
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    latency_ms: int = 0,
    jitter_ms: int = 0,
    startup_timeout: float = 15.0,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m partner_simulator` (own process, own GIL); return it and its URL.

    The caller owns the process: `proc.terminate(); proc.wait()` when done.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    # A picked port may be taken between close and the child's bind: retry then.
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        chosen = port or _free_port(host)
        cmd = [sys.executable, "-m", "partner_simulator", "--host", host, "--port", str(chosen)]
        cmd += ["--latency-ms", str(latency_ms), "--jitter-ms", str(jitter_ms)]
        proc = subprocess.Popen(cmd, env=env, cwd=_PROJECT_ROOT, preexec_fn=_die_with_parent)
        url = url_for(host, chosen)
        try:
            wait_for_health(url, startup_timeout, alive=lambda p=proc: p.poll() is None)
        except RuntimeError:  # the child exited, most likely because the port was taken
            proc.wait()
            if attempt + 1 == attempts:
                raise
            continue
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc, url
    raise AssertionError("unreachable")


class SimulatorClient:
    """Synchronous client for the /_sim controls and read-only views."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, **options: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self._http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def health(self) -> bool:
        return bool(self._get("/_sim/health").get("ok"))

    def calls(self, path_prefix: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since}
        if path_prefix:
            params["path_prefix"] = path_prefix
        calls: list[dict[str, Any]] = self._get("/_sim/calls", params)["calls"]
        return calls

    def set_flight_seats(self, flight_id: str, n: int) -> None:
        self._send("PUT", f"/_sim/flights/{flight_id}", {"seats": n})

    def set_show_seats(self, event_id: str, n: int) -> None:
        self._send("PUT", f"/_sim/shows/{event_id}", {"seats": n})

    def flight_seats(self, flight_id: str) -> int:
        return int(self._get(f"/_sim/flights/{flight_id}")["seats"])

    def show_seats(self, event_id: str) -> int:
        return int(self._get(f"/_sim/shows/{event_id}")["seats"])

    def fault(
        self,
        path_prefix: str,
        status: int | None = 503,
        times: int | None = None,
        delay_ms: int = 0,
        rate: float | None = None,
        methods: list[str] | None = None,
        seed: int = 0,
        retry_after: float | None = None,
        retry_after_http_date: bool = False,
    ) -> dict[str, Any]:
        """Add a fault rule. `times=None` means once, or unlimited when `rate` is given.

        `retry_after` (seconds) adds `Retry-After` to the failure, as delta-seconds or, with
        `retry_after_http_date`, as an HTTP-date.
        """
        body: dict[str, Any] = {"path_prefix": path_prefix, "status": status, "delay_ms": delay_ms}
        body["seed"] = seed
        if times is not None:
            body["times"] = times
        if rate is not None:
            body["rate"] = rate
        if methods is not None:
            body["methods"] = methods
        if retry_after is not None:
            body["retry_after"] = retry_after
        if retry_after_http_date:
            body["retry_after_http_date"] = True
        rule: dict[str, Any] = self._send("POST", "/_sim/faults", body)
        return rule

    add_fault = fault  # the name the /_sim/faults control suggests; both are kept

    def faults(self) -> list[dict[str, Any]]:
        faults: list[dict[str, Any]] = self._get("/_sim/faults")["faults"]
        return faults

    def clear_faults(self) -> None:
        self._send("DELETE", "/_sim/faults")

    def set_quota(self, path_prefix: str, per_second: int) -> dict[str, Any]:
        """Past `per_second` calls under the prefix in a sliding second, answer 429 +
        `Retry-After: 1`; 0 lifts the prefix's quota."""
        body = {"path_prefix": path_prefix, "per_second": per_second}
        quota: dict[str, Any] = self._send("PUT", "/_sim/quota", body)
        return quota

    def clear_quota(self, path_prefix: str | None = None) -> None:
        """Lift one prefix's quota, or every quota when no prefix is given."""
        if path_prefix is None:
            self._send("DELETE", "/_sim/quota")
        else:
            self.set_quota(path_prefix, 0)

    def quotas(self) -> list[dict[str, Any]]:
        quotas: list[dict[str, Any]] = self._get("/_sim/quota")["quotas"]
        return quotas

    def set_latency(self, delay_ms: int, jitter_ms: int = 0) -> None:
        """Every partner call waits delay_ms +- a uniform jitter (at least 0)."""
        self._send("PUT", "/_sim/latency", {"delay_ms": delay_ms, "jitter_ms": jitter_ms})

    def latency(self) -> dict[str, int]:
        latency: dict[str, int] = self._get("/_sim/latency")
        return latency

    def reset(self) -> None:
        self._send("POST", "/_sim/reset")

    # Read through /_sim views so inspecting leaves the call log and fault budgets untouched.
    def flight_tickets(
        self, reference_id: str | None = None, flight_id: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"reference_id": reference_id, "flight_id": flight_id}
        tickets: list[dict[str, Any]] = self._get(
            "/_sim/flight-tickets", {k: v for k, v in params.items() if v is not None}
        )
        return tickets

    def refunds(self, payment_reference: str | None = None) -> list[dict[str, Any]]:
        params = {"payment_reference": payment_reference} if payment_reference else None
        refunds: list[dict[str, Any]] = self._get("/_sim/refunds", params)
        return refunds

    def receipts(self, ticket_id: str | None = None) -> list[dict[str, Any]]:
        params = {"ticket_id": ticket_id} if ticket_id else None
        receipts: list[dict[str, Any]] = self._get("/_sim/receipts", params)
        return receipts

    # Drift behind the product's back, for the audit to find (see partner_simulator/app.py).
    def revive_flight_ticket(self, ticket_id: str) -> dict[str, Any]:
        ticket: dict[str, Any] = self._send("POST", f"/_sim/flight-tickets/{ticket_id}/revive")
        return ticket

    def forget_refunds(self, payment_reference: str) -> int:
        return int(self._send("DELETE", f"/_sim/refunds/{payment_reference}")["forgotten"])

    def unvoid_receipt(self, ticket_id: str) -> dict[str, Any]:
        receipt: dict[str, Any] = self._send("POST", f"/_sim/receipts/{ticket_id}/unvoid")
        return receipt

"""`python -m partner_simulator [--host H] [--port P] [--latency-ms N] [--jitter-ms J]`: serve
the simulator."""

from __future__ import annotations

import argparse
import gc
import logging
import os

import uvicorn

from partner_simulator.app import create_app
from partner_simulator.server import bind_socket, tls_options, url_for, uvicorn_config
from partner_simulator.state import DEFAULT_MAX_CALLS

log = logging.getLogger("partner_simulator")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m partner_simulator", description="In-memory partner simulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8888, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0, help="delay on every partner call")
    parser.add_argument(
        "--jitter-ms", type=int, default=0, help="each call's delay varies by up to +- this"
    )
    parser.add_argument("--max-calls", type=int, default=DEFAULT_MAX_CALLS, help="call log size")
    # HTTPS (uvicorn's own options): a certificate and key; for client certificates (mTLS)
    # the CA that signs them and whether one is required.
    parser.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--ssl-keyfile", help="its private key (PEM)")
    parser.add_argument("--ssl-ca-certs", help="CA of the client certificates it accepts")
    parser.add_argument(
        "--ssl-cert-reqs",
        choices=["none", "optional", "required"],
        default="none",
        help="client certificate: not asked for, optional, or required (mTLS)",
    )
    args = parser.parse_args(argv)
    tls = tls_options(args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs, args.ssl_cert_reqs)

    json_lines = os.environ.get("LOG_FORMAT", "text").strip().lower() == "json"
    if json_lines:  # one JSON object a line, as every process of the product logs
        from pythonjsonlogger.json import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
            )
        )
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    else:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Bind here rather than in uvicorn so the banner shows the real port when --port 0.
    sock = bind_socket(args.host, args.port)
    url = url_for(args.host, sock.getsockname()[1], "https" if tls else "http")
    log.info(
        "partner simulator listening on %s (latency %d +- %d ms)",
        url,
        args.latency_ms,
        args.jitter_ms,
    )
    app = create_app(latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, max_calls=args.max_calls)
    # Start-up objects out of the cycle collector's full passes, and those passes rare: the
    # simulator's books only grow, and a 20-50 ms pause mid-request would be the simulator's
    # latency, not the product's (it must never be the bottleneck).
    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 10, 1000)
    # JSON: uvicorn's loggers left to the root logger's handler.
    quiet = {"log_config": None} if json_lines else {}
    uvicorn.Server(uvicorn_config(app, **tls, **quiet)).run(sockets=[sock])


if __name__ == "__main__":
    main()

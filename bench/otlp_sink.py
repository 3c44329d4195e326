"""`python -m bench.otlp_sink --port 4318`: an OTLP/HTTP endpoint that takes spans and drops them.

For measuring what tracing costs the saga (docs/performance.md): the workers export to it as
they would to a Collector, and it answers at once. It counts what it got and, on SIGTERM or
Ctrl-C, prints the count.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_lock = threading.Lock()
_got = {"requests": 0, "bytes": 0}


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a Collector is used

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", 0))
        self.rfile.read(size)
        with _lock:
            _got["requests"] += 1
            _got["bytes"] += size
        # An empty ExportTraceServiceResponse: everything accepted.
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.otlp_sink", description=__doc__)
    p.add_argument("--port", type=int, default=4318)
    args = p.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _Sink)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    print(f"otlp sink: {_got['requests']} exports, {_got['bytes']:,} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

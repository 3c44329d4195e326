"""`python -m bench.client_cost`: what one Redis round trip costs the calling process, in CPU.

The saga's lever is its round trips (docs/performance.md, "CPU per bundle"), so this says
where a round trip's CPU goes: the same command made three ways, in interleaved rounds on a
private `redis-server`, timed with `time.thread_time()` (this thread's CPU, not the wait for
Redis):

- `client`: redis-py as the saga calls it (`Redis.ping()`, a registered script with a 2 KB
  argument like a bundle's document): the pool, the retry wrapper, event and metrics hooks;
- `connection`: a redis-py `Connection` taken from the pool once (`send_command` and
  `read_response`, hiredis parsing): the client's layers left out;
- `socket`: the same RESP bytes on a plain socket (`sendall` + `recv`): the system calls alone.

The figures are this machine's; what matters is the split, not the microseconds.
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from collections.abc import Callable

import redis

from vip_bundles import local_stack

ROUNDS, CALLS = 7, 2000
DOCUMENT = "x" * 2000  # about a finalized bundle's document


def cpu_us(call: Callable[[], object]) -> float:
    started = time.thread_time()
    for _ in range(CALLS):
        call()
    return (time.thread_time() - started) / CALLS * 1e6


def ways(r: redis.Redis, port: int) -> dict[str, Callable[[], object]]:
    script = r.register_script("return 1")
    script(keys=["k"], args=[DOCUMENT])  # loaded: EVALSHA from here on
    conn = r.connection_pool.get_connection()
    raw = socket.create_connection(("127.0.0.1", port))
    ping = b"*1\r\n$4\r\nPING\r\n"

    def conn_ping() -> object:
        conn.send_command("PING")
        return conn.read_response()

    def socket_ping() -> bytes:
        raw.sendall(ping)
        return raw.recv(64)

    return {
        "client PING": r.ping,
        "client EVALSHA, 2 KB argument": lambda: script(keys=["k"], args=[DOCUMENT]),
        "connection PING": conn_ping,
        "socket PING": socket_ping,
    }


def main() -> int:
    server = local_stack.start_redis_server()
    try:
        r = redis.Redis.from_url(server.url)
        calls = ways(r, r.connection_pool.connection_kwargs["port"])
        for call in calls.values():  # warm-up
            cpu_us(call)
        figures: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(ROUNDS):
            for name, call in calls.items():
                figures[name].append(cpu_us(call))
    finally:
        server.stop()
    python = sys.version.split()[0]
    print(f"redis-py {redis.__version__}, Python {python}, {ROUNDS} rounds of {CALLS} calls")
    for name, values in figures.items():
        print(f"{name:32s} median {statistics.median(values):6.1f} us of CPU a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

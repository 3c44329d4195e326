"""`python -m bench.ab gate`: what the fleet's partner gate costs a partner call, in CPU.

Three clients make the same flight bookings against the simulator (answering at once), in
interleaved rounds on a private `redis-server`: without the gate (a bare client), with the gate
(Retry-After and the circuit breaker: one Lua script a call), and with the gate and a quota
(the GCRA adds a write). A call's CPU is this process's CPU plus the Redis server's (INFO cpu),
over the calls of a round; the simulator's is left out (the same for all three). The issue's
budget: at most 0.2 ms of CPU a partner call for the limiter and the breaker.
"""

from __future__ import annotations

import statistics
import time
import uuid

from redis import Redis

from adapters.partner_gate import PartnerGate
from adapters.partners import Partners
from partner_simulator.server import start_subprocess
from vip_bundles import local_stack

SIDES = ("bare", "gate", "gate+quota")


def _redis_cpu_s(r: Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _round(client: Partners, r: Redis, calls: int) -> float:
    """CPU ms per call (this process + Redis) over `calls` bookings."""
    cpu, server = time.process_time(), _redis_cpu_s(r)
    for _ in range(calls):
        client.book_flight(
            customer_email="bench@example.com",
            flight_id="f-bench",
            passenger_names=["Ann"],
            reference_id="bench",
            idempotency_key=uuid.uuid4().hex,
        )
    spent = time.process_time() - cpu + _redis_cpu_s(r) - server
    return spent * 1000 / calls


def main(rounds: int, calls: int) -> int:
    redis_server = local_stack.start_redis_server()
    sim, sim_url = start_subprocess()
    r = Redis.from_url(redis_server.url)
    try:
        prefix = f"bench-gate-{uuid.uuid4().hex[:6]}:"
        # A quota far above what one thread can send: it spaces nothing, only its work counts.
        gates = {
            "bare": None,
            "gate": PartnerGate(r, prefix),
            "gate+quota": PartnerGate(r, prefix + "q:", {"transportation-api": 1e6}),
        }
        clients = {side: Partners(sim_url, gate=gates[side]) for side in SIDES}
        for client in clients.values():
            _round(client, r, 50)  # warm: connections, scripts loaded, pydantic built
        per_call: dict[str, list[float]] = {side: [] for side in SIDES}
        for i in range(rounds):
            order = SIDES if i % 2 == 0 else SIDES[::-1]
            for side in order:
                per_call[side].append(_round(clients[side], r, calls))
            shown = ", ".join(f"{s} {per_call[s][-1]:.3f}" for s in SIDES)
            print(f"round {i + 1}: cpu ms per call: {shown}", flush=True)
        bare = statistics.median(per_call["bare"])
        print(f"{rounds} rounds of {calls} calls; medians, CPU ms per partner call:")
        for side in SIDES:
            median = statistics.median(per_call[side])
            print(f"  {side}: {median:.3f} ({median - bare:+.3f} over bare)")
    finally:
        r.close()
        sim.terminate()
        sim.wait()
        redis_server.stop()
    return 0

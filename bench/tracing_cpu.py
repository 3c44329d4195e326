"""`python -m bench.tracing_cpu off|on|on10|sampler-off --bundles 600`: one `-P solo` worker's
CPU per bundle, tracing off or on (docs/performance.md, "Tracing").

A private Redis, the simulator at 1 ms, one solo worker (every task in one process, so its
CPU is all of the saga's worker work) and, when tracing is on, `bench/otlp_sink.py` as the
OTLP endpoint. After a warm-up, N bundles go through the Celery door; the worker's CPU time
(`/proc`, user + system, its exporter thread included) is read before and after they are all
finalized. Run the sides alternately: single runs move with the machine's load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout this file is in

from partner_simulator.server import start_subprocess
from vip_bundles import local_stack

SIDES = {
    "off": {},
    "on": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "on10": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
    "sampler-off": {"OTEL_TRACES_SAMPLER": "always_off"},  # the hooks run, nothing is recorded
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tracing_cpu", description=__doc__)
    p.add_argument("side", choices=list(SIDES))
    p.add_argument("--bundles", type=int, default=600)
    args = p.parse_args(argv)
    redis = local_stack.start_redis_server()
    db = local_stack.claim_database(local_stack.server_url_of(redis.url))
    sim, sim_url = start_subprocess(latency_ms=1)
    env = {k: v for k, v in local_stack.celery_env().items() if not k.startswith("OTEL_")}
    env.update(REDIS_URL=db.url, GATEWAY_URL=sim_url)
    os.environ.update(REDIS_URL=db.url, GATEWAY_URL=sim_url)  # before `tasks` reads settings
    started: list[subprocess.Popen[bytes]] = [sim]
    try:
        if args.side != "off":
            port = local_stack.free_port()
            sink = [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)]
            started.append(subprocess.Popen(sink, cwd=local_stack.ROOT))
            env.update(SIDES[args.side], OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
        worker = local_stack.start_worker(env, f"tracing-cpu-{args.side}@localhost", 1, "solo")
        started.append(worker.process)
        from process_manager.bundle import Status
        from process_manager.messages import example_request
        from tasks.celery_app import app, store

        def book(n: int) -> list[str]:
            sent = [
                app.send_task("vip_bundle.book", kwargs=example_request(), queue="vip-bundles")
                for _ in range(n)
            ]
            return [r.get(timeout=120)["vip_bundle_id"] for r in sent]

        def settle(ids: list[str]) -> None:
            for bundle_id in ids:
                while (b := store().get(bundle_id)) is None or b.status is not Status.FINALIZED:
                    time.sleep(0.05)

        settle(book(20))  # warm-up: clients made, code paths loaded
        before, t0 = cpu_s(worker.process.pid), time.monotonic()
        settle(book(args.bundles))
        wall = time.monotonic() - t0
        if args.side != "off":
            time.sleep(5.5)  # the exporter's last batch (its schedule: 5 s) counted too
        per_bundle = (cpu_s(worker.process.pid) - before) / args.bundles * 1000
        load = Path("/proc/loadavg").read_text().split()[0]
        print(
            f"{args.side}: {args.bundles} bundles in {wall:.1f} s, worker CPU "
            f"{per_bundle:.2f} ms a bundle (load average {load})",
            flush=True,
        )
    finally:
        for process in reversed(started):
            local_stack.stop_process(process)
        db.release()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo: book a handful of bundles end to end, some of which roll back, and show what happened.

It starts whatever is missing (Redis, the partner simulator, a worker), says what it started,
and stops it all again at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


@dataclass(frozen=True)
class Scenario:
    name: str
    sold_out: str | None = None  # "show", "inbound" or "return"
    fault: dict[str, Any] | None = None  # a simulator fault injected for this bundle's run


SCENARIOS = [
    Scenario("everything available"),
    Scenario(
        "everything available, flights answer 503 twice",
        fault={"path_prefix": "/transportation-api", "status": 503, "times": 2},
    ),
    Scenario("return flight sold out", sold_out="return"),
    Scenario("inbound flight sold out", sold_out="inbound"),
    Scenario("show sold out", sold_out="show"),
    Scenario(
        "return sold out, payments answer 503 twice",
        sold_out="return",
        fault={"path_prefix": "/payments-api", "status": 503, "times": 2},
    ),
]


def run(bundles_per_scenario: int = 1) -> int:
    from adapters.settings import get_settings
    from vip_bundles import local_stack

    started: list[Any] = []
    try:
        redis = local_stack.ensure_redis(get_settings().redis_url)
        console.print(f"[bold]Redis[/]: {redis.how}")
        started.append(redis)
        from partner_simulator.server import SimulatorClient, start_subprocess

        sim_proc, sim_url = start_subprocess()
        started.append(sim_proc)
        console.print(f"[bold]Partner simulator[/]: started at {sim_url}")
        # Settings are read once per process: set them before the tasks are imported.
        os.environ.update(REDIS_URL=redis.url, GATEWAY_URL=sim_url)
        get_settings.cache_clear()
        worker = local_stack.start_worker(local_stack.celery_env(), name="demo@localhost")
        started.append(worker)
        console.print(
            f"[bold]Celery worker[/]: started `celery -A tasks worker` (log: {worker.logfile})"
        )
        return _book_all(
            SimulatorClient(sim_url),
            bundles_per_scenario,
            redis.process is None and redis.embedded is None,
        )
    finally:
        for thing in reversed(started):
            if hasattr(thing, "stop"):
                thing.stop()
            else:
                local_stack.stop_process(thing)
        console.print("Stopped what the demo started.")


def _book_all(sim: Any, per_scenario: int, redis_kept: bool) -> int:
    from process_manager.bundle import Bundle
    from tasks.celery_app import app, store

    rows: list[tuple[Scenario, Bundle, float]] = []
    total = len(SCENARIOS) * per_scenario
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("booking bundles", total=total)
        for scenario in SCENARIOS:
            progress.update(bar, description=f"booking: {scenario.name}")
            started = time.monotonic()
            ids = [_start(app, sim, scenario) for _ in range(per_scenario)]
            for bundle_id in ids:
                bundle = _wait(store(), bundle_id)
                rows.append((scenario, bundle, time.monotonic() - started))
                progress.advance(bar)
            sim.clear_faults()

    table = Table(title="VIP bundles booked by the demo")
    for column in ("bundle", "scenario", "final state", "compensated", "events", "seconds"):
        table.add_column(column)
    for scenario, bundle, seconds in rows:
        colour = "green" if bundle.status == "finalized" else "yellow"
        table.add_row(
            bundle.vip_bundle_id[:8],
            scenario.name,
            f"[{colour}]{bundle.status}[/]",
            describe_compensations(bundle),
            str(len(bundle.history)),
            f"{seconds:.2f}",
        )
    console.print(table)
    console.print(f"Events were published to the Redis stream [bold]{store().stream}[/].")
    if redis_kept:  # the bundles outlive the demo only in a Redis we did not start
        example = next(b for _, b, _ in rows if b.status == "failed")
        console.print(
            f"Why a bundle failed, step by step: vip-bundles status {example.vip_bundle_id}"
        )
    unsettled = [b for _, b, _ in rows if b.status not in ("finalized", "failed")]
    return 1 if unsettled else 0


def _start(app: Any, sim: Any, scenario: Scenario) -> str:
    from process_manager.messages import example_request

    body = example_request()
    if scenario.sold_out == "show":
        sim.set_show_seats(body["show_id"], 0)
    elif scenario.sold_out:
        sim.set_flight_seats(body[f"{scenario.sold_out}_flight_id"], 0)
    if scenario.fault:
        sim.fault(**scenario.fault)
    answer = app.send_task("vip_bundle.book", kwargs=body, queue="vip-bundles").get(timeout=30)
    return str(answer["vip_bundle_id"])


def _wait(store: Any, bundle_id: str, timeout: float = 60) -> Any:
    from process_manager.bundle import FINAL, Status

    deadline = time.monotonic() + timeout
    while True:
        bundle = store.require(bundle_id)
        settled = bundle.status in FINAL or bundle.status is Status.COMPENSATION_FAILED
        if settled or time.monotonic() > deadline:
            return bundle
        time.sleep(0.05)


def describe_compensations(bundle: Any) -> str:
    """What the rollback undid, in words ("-" when nothing was)."""
    done = []
    if bundle.refunded_ticket_ids:
        n = len(bundle.refunded_ticket_ids)
        done.append(f"refunded {n} ticket{'s' * (n > 1)} + voided receipts")
    for leg in bundle.cancelled_legs:
        n = len(bundle.flight_tickets.get(leg, []))
        done.append(f"cancelled {leg} flight ({n} tickets)")
    if bundle.failure and not done:
        done.append("nothing was booked")
    return "; ".join(done) or "-"

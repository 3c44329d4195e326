"""`vip-bundles`: the command line door (shared/intake-api.md, door 3) and the demo."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

cli = typer.Typer(
    help="VIP bundles: show tickets + flights, sold as a Celery saga.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@cli.command()
def demo(per_scenario: Annotated[int, typer.Option(help="bundles per scenario")] = 1) -> None:
    """Book bundles end to end (some roll back) and print what happened."""
    from vip_bundles.demo import run

    raise typer.Exit(run(per_scenario))


@cli.command()
def book(
    customer_email: Annotated[str, typer.Option()],
    show_id: Annotated[str, typer.Option()],
    inbound_flight_id: Annotated[str, typer.Option()],
    return_flight_id: Annotated[str, typer.Option()],
    passenger: Annotated[list[str], typer.Option(help="repeat for each passenger")],
    number_of_tickets: Annotated[
        int | None, typer.Option(help="default: one per passenger")
    ] = None,
    vip_bundle_id: Annotated[str | None, typer.Option()] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 30,
) -> None:
    """Book a VIP bundle through the Celery door (a running worker does the work)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tasks.celery_app import app

    request = {
        "customer_email": customer_email,
        "number_of_tickets": number_of_tickets or len(passenger),
        "show_id": show_id,
        "passengers": passenger,
        "inbound_flight_id": inbound_flight_id,
        "return_flight_id": return_flight_id,
    }
    if vip_bundle_id:
        request["vip_bundle_id"] = vip_bundle_id
    result = app.send_task("vip_bundle.book", kwargs=request, queue="vip-bundles")
    try:
        answer = result.get(timeout=timeout)
    except CeleryTimeout:
        console.print(f"[red]no answer in {timeout} s: is a worker running?[/]")
        raise typer.Exit(2) from None
    except Exception as exc:  # the worker's refusal, rebuilt from the result backend
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(answer))


@cli.command()
def status(vip_bundle_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A bundle's state and its timeline."""
    from tasks.celery_app import store

    bundle = store().get(vip_bundle_id)
    if bundle is None:
        console.print(f"[red]no vip bundle {vip_bundle_id}[/]")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(bundle.model_dump_json(indent=2) + "\n")
        return
    console.print(
        f"[bold]{bundle.vip_bundle_id}[/]  status: [bold]{bundle.status}[/]  "
        f"booking: {bundle.booking_id}"
    )
    console.print(f"tickets: {bundle.ticket_ids}")
    console.print(f"flight tickets: { {str(k): v for k, v in bundle.flight_tickets.items()} }")
    if bundle.failure:
        console.print(f"failure: {bundle.failure.step}: {bundle.failure.reason}")
    table = Table(title="timeline")
    for column in ("at", "+s", "event", "from", "to", "detail"):
        table.add_column(column)
    start = bundle.history[0].at if bundle.history else None
    for h in bundle.history:
        offset = f"{(h.at - start).total_seconds():.3f}" if start else ""
        table.add_row(
            h.at.isoformat(timespec="milliseconds"),
            offset,
            h.event,
            str(h.from_status or ""),
            str(h.to_status),
            h.detail or "",
        )
    console.print(table)


@cli.command("list")
def list_(
    status: Annotated[str, typer.Option("--status", help="e.g. failed, compensation_failed")],
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Bundles in one status, most recently changed first."""
    from process_manager.bundle import Status
    from tasks.celery_app import store

    try:
        wanted = Status(status)
    except ValueError:
        console.print(f"[red]--status: one of {', '.join(s.value for s in Status)}[/]")
        raise typer.Exit(2) from None
    st = store()
    table = Table(title=f"{st.count(wanted)} bundles {wanted}")
    for column in ("vip_bundle_id", "updated", "failure"):
        table.add_column(column)
    for b in st.list(wanted, limit=limit):
        failure = f"{b.failure.step}: {b.failure.reason}" if b.failure else ""
        table.add_row(b.vip_bundle_id, b.updated_at.isoformat(timespec="seconds"), failure)
    console.print(table)


@cli.command()
def simulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8888,
) -> None:
    """Run the partner simulator (shows, flights, payments, receipts) in the foreground."""
    import subprocess

    raise typer.Exit(
        subprocess.call(
            [sys.executable, "-m", "partner_simulator", "--host", host, "--port", str(port)]
        )
    )


def main() -> None:
    cli()

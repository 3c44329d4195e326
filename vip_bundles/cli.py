"""`vip-bundles`: the command line door (shared/intake-api.md, door 3) and the demo."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from process_manager import versions

cli = typer.Typer(
    help="VIP bundles: show tickets + flights, sold as a Celery saga.",
    no_args_is_help=True,
    add_completion=False,
    # Help texts are plain text: with rich markup, "[/{id}]" in a docstring is a closing tag
    # and `--help` crashes (typer >= 0.20 renders rich markup by default).
    rich_markup_mode=None,
)
console = Console()


@cli.callback()
def _process(ctx: typer.Context) -> None:
    # Traces and log format from the environment (adapters/telemetry.py); `api` sets up its
    # own process, as the HTTP door.
    from adapters import telemetry

    telemetry.setup_logging()
    if ctx.invoked_subcommand not in ("api", "simulator"):
        telemetry.setup_tracing("cli")


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
    vip_bundle_id: Annotated[str | None, typer.Option(help="only with --count 1")] = None,
    count: Annotated[int, typer.Option(min=1, help="book this many bundles")] = 1,
    wait: Annotated[bool, typer.Option(help="wait until each bundle is settled")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each answer")] = 30,
) -> None:
    """Book VIP bundles through the Celery door (running workers do the work)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tasks.celery_app import app

    request = {
        "customer_email": customer_email,
        "number_of_tickets": len(passenger) if number_of_tickets is None else number_of_tickets,
        "show_id": show_id,
        "passengers": passenger,
        "inbound_flight_id": inbound_flight_id,
        "return_flight_id": return_flight_id,
    }
    if vip_bundle_id:
        if count > 1:
            raise typer.BadParameter("one id names one bundle", param_hint="--vip-bundle-id")
        request["vip_bundle_id"] = vip_bundle_id
    results = [
        app.send_task("vip_bundle.book", kwargs=request, queue="vip-bundles") for _ in range(count)
    ]
    answers, refused = [], []
    with _progress(count > 1) as progress:
        bar = progress.add_task("booking", total=count)
        for result in results:
            try:
                answers.append(result.get(timeout=timeout))
            except CeleryTimeout:
                console.print(f"[red]no answer in {timeout} s: is a worker running?[/]")
                raise typer.Exit(2) from None
            except Exception as exc:  # the worker's refusal, rebuilt from the result backend
                refused.append(str(exc))
            progress.advance(bar)
    if refused:
        console.print(f"[red]refused:[/] {refused[0]}")
        raise typer.Exit(1)
    if count == 1 and not wait:
        console.print_json(json.dumps(answers[0]))
        return
    if wait:
        _wait_settled([a["vip_bundle_id"] for a in answers], show_bar=count > 1)
    else:
        console.print(f"booked {len(answers)} bundles: vip-bundles status <id> for each")


def _progress(visible: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not visible,
    )


def _wait_settled(bundle_ids: list[str], show_bar: bool, timeout: float = 300) -> None:
    from collections import Counter

    from process_manager.bundle import FINAL, Status
    from tasks.celery_app import store

    settled_states = {*FINAL, Status.COMPENSATION_FAILED}
    pending, statuses = set(bundle_ids), Counter[str]()
    deadline = time.monotonic() + timeout
    with _progress(show_bar) as progress:
        bar = progress.add_task("settling", total=len(bundle_ids))
        while pending and time.monotonic() < deadline:
            for bundle_id in list(pending):
                bundle = store().require(bundle_id)
                if bundle.status in settled_states:
                    pending.discard(bundle_id)
                    statuses[bundle.status] += 1
                    progress.advance(bar)
            time.sleep(0.1)
    statuses.update({"still in flight": len(pending)} if pending else {})
    if len(bundle_ids) == 1:
        console.print(f"{bundle_ids[0]}: {next(iter(statuses))}")
    else:
        console.print(", ".join(f"{n} {s}" for s, n in statuses.most_common()))


@cli.command()
def status(vip_bundle_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """A bundle's state and its timeline (and its trace, when it was traced)."""
    from adapters import telemetry
    from adapters.settings import get_settings
    from tasks.archive import finder

    bundle = finder().get(vip_bundle_id)  # live in Redis, or archived
    if bundle is None:
        console.print(f"[red]no vip bundle {vip_bundle_id}[/]")
        raise typer.Exit(1)
    if as_json:
        data = json.loads(bundle.model_dump_json())
        data["archived_at"] = bundle.archived_at.isoformat() if bundle.archived_at else None
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    archived = f"  archived_at: {bundle.archived_at.isoformat()}" if bundle.archived_at else ""
    console.print(
        f"[bold]{bundle.vip_bundle_id}[/]  status: [bold]{bundle.status}[/]  "
        f"booking: {bundle.booking_id}{archived}"
    )
    console.print(
        f"created by release {versions.release_label(bundle.created_by_release)}, "
        f"last moved by release {versions.release_label(bundle.moved_by_release)}"
    )
    if (trace_id := telemetry.trace_id_of(bundle.traceparent)) is not None:
        url = telemetry.trace_url(get_settings().trace_url_template, trace_id)
        console.print(f"trace: {trace_id}" + (f"  {url}" if url else ""), highlight=False)
    console.print(f"tickets: {bundle.ticket_ids}")
    console.print(f"flight tickets: { {str(k): v for k, v in bundle.flight_tickets.items()} }")
    if bundle.failure:
        console.print(f"failure: {bundle.failure.step}: {bundle.failure.reason}")
    if (c := bundle.cancellation) is not None:
        by = f" by {c.requested_by}" if c.requested_by else ""
        console.print(
            f"cancelled{by} at {c.requested_at.isoformat(timespec='seconds')} "
            f"(was {c.from_status}): {c.reason}"
        )
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
            (h.detail or "") + (f" (x{h.repeats + 1} rounds)" if h.repeats else ""),
        )
    console.print(table)


@cli.command()
def cancel(
    vip_bundle_id: str,
    reason: Annotated[str, typer.Option(help="why (kept on the bundle and its events)")],
) -> None:
    """Cancel a bundle: undo everything it booked (workers do the undos). Idempotent."""
    from adapters.store import BundleNotFound
    from process_manager.messages import CancelReason, InvalidRequest, parse_cancel
    from tasks.cancel import CancelRefused, answer, cancel_bundle

    try:
        body = parse_cancel(CancelReason, {"reason": reason})
    except InvalidRequest as exc:
        raise typer.BadParameter(str(exc), param_hint="--reason") from None
    try:
        bundle = cancel_bundle(vip_bundle_id, body.reason, who="cli")
    except (BundleNotFound, CancelRefused) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(answer(bundle)))


@cli.command("list")
def list_(
    status: Annotated[str, typer.Option("--status", help="e.g. failed, compensation_failed")],
    limit: Annotated[int, typer.Option()] = 50,
) -> None:
    """Bundles in one status, most recently changed first."""
    from process_manager.bundle import Status
    from tasks.archive import finder

    try:
        wanted = Status(status)
    except ValueError:
        console.print(f"[red]--status: one of {', '.join(s.value for s in Status)}[/]")
        raise typer.Exit(2) from None
    st = finder()  # final statuses continue into the archive
    table = Table(title=f"{st.count(wanted)} bundles {wanted}")
    for column in ("vip_bundle_id", "updated", "failure / cancellation"):
        table.add_column(column)
    for b in st.list(wanted, limit=limit):
        why = f"{b.failure.step}: {b.failure.reason}" if b.failure else ""
        if b.cancellation:
            why = f"cancelled: {b.cancellation.reason}"
        table.add_row(b.vip_bundle_id, b.updated_at.isoformat(timespec="seconds"), why)
    console.print(table)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(text: str) -> float:
    """`--since`: an ISO-8601 time (UTC unless it says otherwise) or an age: 90s, 15m, 2h, 7d."""
    from datetime import UTC, datetime

    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        return time.time() - float(number) * _UNITS[unit]
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            "an ISO-8601 time or an age like 15m", param_hint="--since"
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


@cli.command()
def audit(
    since: Annotated[
        str | None,
        typer.Option(help="only bundles settled since: ISO-8601 time or age (90s, 15m, 2h, 7d)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="only the most recently settled N bundles")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per finding")] = False,
) -> None:
    """Compare settled bundles with the partners' records; exit 1 if anything disagrees."""
    from adapters.partners import PartnerError
    from adapters.settings import get_settings
    from tasks.archive import finder
    from tasks.audit import audit as run_audit
    from tasks.celery_app import partners

    after = _since(since) if since else None
    until = time.time()
    # Live and archived settled bundles alike.
    ids = [i for i, _ in finder().settled(after=after, until=until, limit=limit, newest=True)]
    checked = found = 0
    try:
        for _, findings in run_audit(
            finder(), partners(), ids, until, get_settings().audit_filtered_calls
        ):
            checked += 1
            for f in findings:
                found += 1
                if as_json:
                    line = json.dumps(f.to_dict(), separators=(",", ":"))
                else:
                    record = json.dumps(f.record, separators=(",", ":"))
                    line = f"{f.vip_bundle_id} {f.status} {f.kind}: {f.description}; {record}"
                sys.stdout.write(line + "\n")
    except PartnerError as exc:
        sys.stderr.write(f"audit: a partner list could not be read: {exc}\n")
        raise typer.Exit(2) from None
    sys.stderr.write(f"audited {checked} settled bundles: {found} findings\n")
    raise typer.Exit(1 if found else 0)


@cli.command()
def resume(vip_bundle_id: str) -> None:
    """Take a bundle up now: a parked one is resumed, one in flight has its next step sent again."""
    import socket

    from process_manager.bundle import FINAL
    from tasks.archive import finder
    from tasks.take_up import take_up

    bundle = finder().get(vip_bundle_id)  # an archived one is final: refused
    if bundle is None:
        console.print(f"[red]no vip bundle {vip_bundle_id}[/]")
        raise typer.Exit(1)
    if bundle.status in FINAL:
        console.print(f"[red]{vip_bundle_id} is {bundle.status}: nothing to resume[/]")
        raise typer.Exit(1)
    taken = take_up(bundle, by=f"cli@{socket.gethostname()}")
    console.print(f"{vip_bundle_id}: taken up ({bundle.status} -> {taken.status})")


@cli.command()
def stats() -> None:
    """Bundles in each status (from the status indexes: no scan), Redis memory, and each
    partner's back-pressure (circuit, Retry-After left, steps waiting, 429s, waits)."""
    from process_manager.bundle import FINAL, IN_FLIGHT, Status
    from tasks.celery_app import store
    from vip_bundles.cli_archive import memory_lines
    from vip_bundles.partners_view import partners_table

    st = store()
    counts = st.counts()
    table = Table(title=f"{sum(counts.values())} bundles")
    table.add_column("status")
    table.add_column("kind")
    table.add_column("bundles", justify="right")
    table.add_column("archived", justify="right")
    archived = st.archived_counts()
    for s in Status:
        kind = "in flight" if s in IN_FLIGHT else "final" if s in FINAL else "parked"
        style = "bold yellow" if s is Status.COMPENSATION_FAILED and counts[s] else None
        moved = f"{archived[s]:,}" if s in FINAL else ""
        table.add_row(s.value, kind, f"{counts[s]:,}", moved, style=style)
    console.print(table)
    console.print(memory_lines(st))
    console.print(partners_table(st))


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


@cli.command()
def api(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Serve the HTTP door: POST /book-vip-bundle, GET /vip-bundles and /vip-bundles/ID.

    Without API_KEYS it serves loopback only and refuses any other --host.
    """
    from adapters.connection_check import ConnectionCheckFailed
    from vip_bundles.api import serve

    try:
        serve(host=host, port=port)
    except (ValueError, ConnectionCheckFailed) as exc:  # refused to start: why, no traceback
        console.print(f"[red]vip-bundles api: {exc}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


from vip_bundles.cli_archive import archive_cli  # noqa: E402  (its commands need `cli`'s helpers)

cli.add_typer(archive_cli, name="archive")


def main() -> None:
    from vip_bundles.cli_checks import run_checked

    run_checked(cli, sys.argv[1:])

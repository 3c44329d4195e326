"""What every saga step does around its partner call: check it is still due, record the result.

Both ends read the stored state, so a step that is redelivered, replayed by the reconciler or
overtaken by a rollback does nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from celery.signals import task_postrun, task_prerun
from celery.utils.log import get_task_logger

from adapters import telemetry
from adapters.metrics import METER
from adapters.partner_gate import Admission, AdmissionAsk
from adapters.settings import get_settings
from adapters.store import Applied, Decide
from process_manager import saga
from process_manager.bundle import UNDOING, Bundle, Status, utcnow
from process_manager.messages import (
    BookFlight,
    BookingFailed_v1,
    BookShowTickets,
    Command,
    Event,
    FinalizeVipBundle,
    FlightBookingFailed_v1,
    Leg,
    Step,
)
from tasks.celery_app import app, partners, store

log = get_task_logger(__name__)
PROCESS_MANAGER = "vip_bundle.process_manager.handle_event"


def due(command: Command) -> Bundle | None:
    """The bundle if `command` is still to be done, else None (and a log line saying why).

    One store script checks the status and counts the start (so a `cancelling` bundle starts
    no forward step). Past `2 * MAX_STEP_ATTEMPTS` starts (the step's worker died every time:
    a failure that ends normally gives up at MAX_STEP_ATTEMPTS) the saga gives up on it.
    """
    started = _start([command])
    return None if started is None else started.bundle


def due_calling(command: BookShowTickets | BookFlight) -> tuple[Bundle, Admission | None] | None:
    """`due` for a forward step about to call its partner: the same script also asks the
    partner gate (adapters/partner_gate.py) for the call's first try, so the happy path pays
    one round trip, not two. The gate's answer goes to the call (`admitted=`)."""
    gate = partners().policy.gate
    ask = gate.ask(PARTNER_OF_STEP[type(command)], undo=False) if gate is not None else None
    started = _start([command], ask)
    return None if started is None else (started.bundle, started.admission)


C = TypeVar("C", bound=Command)


def due_all(commands: Sequence[C]) -> tuple[Bundle, list[C]] | None:
    """`due` for commands of one kind that one task runs together (a bundle's ticket refunds):
    one round trip counts a start of each. The bundle and those still to be done, or None."""
    started = _start(commands)
    return None if started is None else (started.bundle, started.todo)


class _Due(NamedTuple):
    bundle: Bundle
    todo: list[Any]
    admission: Admission | None


def _start(commands: Sequence[C], admit: AdmissionAsk | None = None) -> _Due | None:
    first = commands[0]
    name, bundle_id = type(first).__name__, first.vip_bundle_id
    started = store().start_all(
        bundle_id,
        [saga.step_name(c) for c in commands],
        saga.runs_in(first),
        per_round=saga.counted_per_round(first),
        admit=admit,
    )
    todo = [] if started is None else [c for c in commands if saga.is_pending(started.bundle, c)]
    if started is None or not todo:
        telemetry.annotate(id=bundle_id, step=name, outcome="skipped")
        log.info("%s: skipped, bundle %s is not due for it", name, bundle_id)
        return None
    bundle, starts = started.bundle, started.starts
    telemetry.annotate(
        bundle,
        step=name,
        leg=str(leg) if (leg := getattr(first, "leg", None)) else None,
        attempt=max(starts),
        tickets=len(todo) if len(commands) > 1 else None,
    )
    if not isinstance(first, saga.UNDO_COMMANDS) and _out_of_time(first, bundle, starts[0]):
        return None
    limit = 2 * get_settings().max_step_attempts
    if worn := [(c, n) for c, n in zip(commands, starts, strict=True) if c in todo and n > limit]:
        _give_up(*worn[0])  # an undo parks the whole bundle: once is enough
        return None
    log.info("%s %s", name, bundle_id)  # which worker ran which bundle's step
    return _Due(bundle, todo, started.admission)


# The partner (its path prefix, as PARTNER_RATE_LIMITS names it) each forward step waits on.
PARTNER_OF_STEP = {
    BookShowTickets: "dead-nation-api",
    BookFlight: "transportation-api",
}


def _out_of_time(command: Command, bundle: Bundle, starts: int) -> bool:
    """Past the bundle's booking deadline a forward step is not tried again: the saga gives up
    on it (the bundle rolls back, saying so). True when it did. `starts` counts this start: a
    wait that reached no partner takes its start back (tasks/deferral.py), so an earlier start
    left means an earlier try may have reached the partner (in doubt)."""
    deadline_s = get_settings().booking_deadline_s
    partner = PARTNER_OF_STEP.get(type(command))
    if partner is None or not saga.past_deadline(bundle, deadline_s, utcnow()):
        return False
    applied = store().apply(
        command.vip_bundle_id,
        lambda b: (
            saga.out_of_time(b, command, deadline_s, partner, in_doubt=starts > 1)
            if saga.is_pending(b, command)
            else None
        ),
    )
    log.warning("%s for %s: booking deadline passed", type(command).__name__, bundle.vip_bundle_id)
    hand_over(applied)
    return True


def show_booking(bundle: Bundle) -> dict[str, Any]:
    """The show booking request of a bundle: the same on every try and on its resolve."""
    return {
        "booking_id": bundle.booking_id,  # the seller's idempotency key
        "customer_address": bundle.customer_email,
        "event_id": bundle.show_id,
        "number_of_tickets": bundle.number_of_tickets,
        "correlation_id": bundle.correlation_id,
    }


def flight_booking(bundle: Bundle, leg: Leg) -> dict[str, Any]:
    """One leg's booking request: the same on every try and on its resolve."""
    return {
        "customer_email": bundle.customer_email,
        "flight_id": bundle.flight_id(leg),
        "passenger_names": bundle.passengers,
        "reference_id": bundle.vip_bundle_id,
        "idempotency_key": bundle.key(f"flight-{leg}"),
        "correlation_id": bundle.correlation_id,
    }


def _give_up(command: Command, starts: int) -> None:
    applied = store().apply(
        command.vip_bundle_id,
        lambda b: saga.never_finished(b, command, starts) if saga.is_pending(b, command) else None,
    )
    name, bundle_id = type(command).__name__, command.vip_bundle_id
    log.error("%s for %s: gave up after %d starts", name, bundle_id, starts)
    hand_over(applied)


def hand_over(applied: Applied) -> None:
    """Hand a recorded event to the process manager when it leaves undo work: a failure (the
    bundle now rolls back), or a late outcome recorded while undoing (its tickets are undone)."""
    event = applied.event
    if event is None:
        return
    failure = isinstance(event, BookingFailed_v1 | FlightBookingFailed_v1)
    late = isinstance(event, saga.OUTCOMES) and applied.bundle.status in UNDOING
    if failure or late:
        # By name: tasks.saga (the canvas) imports this module, not the other way round.
        app.send_task(PROCESS_MANAGER, args=[event.to_message()])


def record(
    command: Command,
    outcome: Callable[[Bundle], Event],
    read: Bundle,
    then: Decide | Sequence[Decide] = (),
) -> Applied:
    """Apply the step's event atomically, unless someone else already did (or it moved on).

    `read` is the bundle as `due` read it: stored as the next version of it when nobody
    changed it meanwhile, else the bundle is read again and the step re-decided. A booking
    step that finds the bundle undoing (a cancel came while it was at the partner) is still
    recorded, and its tickets are handed over to be undone. `then` may add the next event to
    the same write (see `finalizing`).
    """
    applied = store().apply(
        command.vip_bundle_id,
        lambda bundle: outcome(bundle) if saga.accepts_outcome(bundle, command) else None,
        current=read,
        then=then,
    )
    telemetry.annotate(outcome=applied.event.name() if applied.event else "not_recorded")
    if applied.event is None:
        log.info(
            "%s: result not recorded, bundle %s is %s",
            type(command).__name__,
            command.vip_bundle_id,
            applied.bundle.status,
        )
    hand_over(applied)
    return applied


def finalizing(bundle: Bundle) -> Event | None:
    """`VipBundleFinalized_v1` if the bundle is `return_booked` (else None). The return-flight
    step writes it together with its own event: no Celery hop and no round trip of its own."""
    command = FinalizeVipBundle(vip_bundle_id=bundle.vip_bundle_id)
    return saga.finalized(bundle) if saga.is_pending(bundle, command) else None


def finalize(bundle: Bundle) -> None:
    """`return_booked` -> `finalized`, for a bundle the reconciler finds `return_booked` (the
    `vip_bundle.finalize` task)."""
    command = FinalizeVipBundle(vip_bundle_id=bundle.vip_bundle_id)
    if saga.is_pending(bundle, command):
        record(command, saga.finalized, bundle)


def finish_rollback(bundle: Bundle) -> None:
    """Undoing with nothing left to undo or resolve: `failed` (rollback) or `cancelled`.

    Every undo calls it after recording itself, so the last one to finish ends the bundle;
    racing undos are settled by the version check (only one final event).
    """
    if bundle.status in (Status.ROLLING_BACK, Status.CANCELLING) and saga.finish(bundle):
        applied = store().apply(bundle.vip_bundle_id, saga.finish, current=bundle)
        if applied.event is not None:
            log.info("bundle %s undone: %s", bundle.vip_bundle_id, applied.bundle.status)


# --- step durations (vip_bundles_step_duration_seconds) -----------------------------------------

_STEP_OF_TASK: dict[str, Callable[[tuple[Any, ...]], str]] = {
    "vip_bundle.book_show_tickets": lambda _: "book_show_tickets",
    "vip_bundle.book_flight": lambda args: f"book_{Leg(args[1])}_flight",
    "vip_bundle.finalize": lambda _: "finalize",
    "vip_bundle.compensation.refund_ticket": lambda _: "refund_ticket",
    "vip_bundle.compensation.refund_tickets": lambda _: "refund_ticket",
    "vip_bundle.compensation.cancel_flight_tickets": lambda _: "cancel_flight_tickets",
    "vip_bundle.compensation.resolve_booking": lambda args: f"resolve_{Step(args[1])}",
}
_started: dict[str, float] = {}


@task_prerun.connect
def _step_started(task_id: str, task: Any, **_: Any) -> None:
    if task.name in _STEP_OF_TASK:
        _started[task_id] = time.perf_counter()


@task_postrun.connect
def _step_ended(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    # Every end counts (done, skipped, failed): the time a worker spent on the step.
    started = _started.pop(task_id, None)
    if started is not None:
        try:
            step = _STEP_OF_TASK[task.name](tuple(args or ()))
        except (IndexError, ValueError):
            return  # a malformed message: no series of its own (labels stay a closed set)
        METER.step(step, time.perf_counter() - started)

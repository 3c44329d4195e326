"""Applying an event to a bundle: its next version, history entry and the fields the event sets.

Pure, like the rest of the domain. Which event may move which status is the saga's table,
`process_manager.saga.TRANSITIONS` (read that first); this module is how a move is made:
`apply` refuses (`IllegalTransition`) an event the table or the bundle's state does not allow,
so a message seen twice, late or foreign changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from process_manager import versions
from process_manager.bundle import UNDOING, Bundle, Cancellation, Drift, Failure, HistoryEntry
from process_manager.messages import (
    BookingFailed_v1,
    BookingMade_v1,
    CancellationResumed,
    CompensationFailed_v1,
    Event,
    FlightBooked_v1,
    FlightBookingFailed_v1,
    FlightTicketsCancelled_v1,
    LedgerDriftDetected_v1,
    Leg,
    RollbackResumed,
    Step,
    StepFailed,
    TicketRefunded_v1,
    VipBundleCancellationRequested_v1,
    VipBundleCancelled_v1,
    VipBundleFailed_v1,
    utcnow,
)
from process_manager.saga import (
    LEG_BOOKED_FROM,
    OUTCOMES,
    TRANSITIONS,
    IllegalTransition,
    S,
    awaited,
    pending_compensations,
)


def apply(bundle: Bundle, event: Event, now: datetime | None = None) -> Bundle:
    """The bundle after `event`, with its history entry; `IllegalTransition` if it does not fit."""
    target = TRANSITIONS.get((bundle.status, type(event)))
    if target is None:
        raise IllegalTransition(f"{event.name()} does not apply to a {bundle.status} bundle")
    changes = _changes(bundle, event)
    now = now or utcnow()
    entry = HistoryEntry(
        at=now,
        event=event.name(),
        from_status=bundle.status,
        to_status=target,
        event_id=event.header.event_id,
        detail=_detail(event),
    )
    return bundle.model_copy(
        update={
            **changes,
            "status": target,
            "version": bundle.version + 1,
            "updated_at": now,
            "history": _history(bundle.history, entry),
            **_written_by_this_release(),
        }
    )


def _written_by_this_release() -> dict[str, Any]:
    # Every write is in this release's shape, and says so (versions.py).
    return {"schema_version": versions.DOCUMENT, "moved_by_release": versions.RELEASE}


# A parked bundle's retry rounds: taken up again, and (no progress) parked again.
RESUMES = frozenset({RollbackResumed.name(), CancellationResumed.name()})
PARKS = frozenset({CompensationFailed_v1.name()})


def _same(a: HistoryEntry, b: HistoryEntry) -> bool:
    return (a.event, a.from_status, a.to_status) == (b.event, b.from_status, b.to_status)


def _history(history: list[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """The history with `entry` appended; but a retry round that ends parked again with no
    progress (taken up, then parked at once, nothing undone between) is folded into the
    previous round's two entries, which count it. An endless retry loop keeps a tail of
    [resumed xN, parked xN] (plus the open round's resume), not two entries a round."""
    if entry.event in PARKS and len(history) >= 3:
        resumed, parked, again = history[-3:]
        if (
            again.event in RESUMES
            and _same(resumed, again)
            and parked.event in PARKS
            and _same(parked, entry)
            and resumed.repeats == parked.repeats
        ):
            return [
                *history[:-3],
                resumed.model_copy(
                    update={
                        "repeats": resumed.repeats + 1,
                        "last_at": again.at,
                        "detail": again.detail,
                    }
                ),
                parked.model_copy(
                    update={
                        "repeats": parked.repeats + 1,
                        "last_at": entry.at,
                        "detail": entry.detail,
                    }
                ),
            ]
    return [*history, entry]


def apply_initial(bundle: Bundle, event: Event) -> Bundle:
    """The first stored version of a bundle, its history opened by `VipBundleInitialized_v1`."""
    entry = HistoryEntry(
        at=bundle.created_at,
        event=event.name(),
        from_status=None,
        to_status=S.INITIALIZED,
        event_id=event.header.event_id,
    )
    return bundle.model_copy(
        update={
            "status": S.INITIALIZED,
            "version": 1,
            "updated_at": bundle.created_at,
            "history": [entry],
            "created_by_release": versions.RELEASE,
            **_written_by_this_release(),
        }
    )


def _changes(bundle: Bundle, event: Event) -> dict[str, Any]:
    """The fields an event sets, after checking it belongs to this bundle's current step."""
    if bundle.status in UNDOING and isinstance(event, OUTCOMES):
        return _late_outcome(bundle, event)
    match event:
        case BookingMade_v1(ticket_ids=ids):
            return {"ticket_ids": ids}
        case BookingFailed_v1(reason=reason, in_doubt=in_doubt):
            return {"failure": Failure(step=Step.SHOW, reason=reason, in_doubt=in_doubt)}
        case FlightBooked_v1(leg=leg, ticket_ids=ids):
            _check_leg(bundle, leg)
            return {"flight_tickets": {**bundle.flight_tickets, leg: ids}}
        case FlightBookingFailed_v1(leg=leg, reason=reason, in_doubt=in_doubt):
            _check_leg(bundle, leg)
            failure = Failure(step=f"book_{leg}_flight", reason=reason, leg=leg, in_doubt=in_doubt)
            return {"failure": failure}
        case TicketRefunded_v1(ticket_id=t):
            if t not in bundle.ticket_ids or t in bundle.refunded_ticket_ids:
                raise IllegalTransition(f"ticket {t} is not waiting for a refund")
            return {"refunded_ticket_ids": [*bundle.refunded_ticket_ids, t]}
        case FlightTicketsCancelled_v1(leg=leg):
            if leg in bundle.cancelled_legs or not bundle.flight_tickets.get(leg):
                raise IllegalTransition(f"{leg} flight is not waiting for a cancellation")
            return {"cancelled_legs": [*bundle.cancelled_legs, leg]}
        case StepFailed(reason=reason):
            return {"step_failures": bundle.step_failures + 1, "last_error": reason}
        case CompensationFailed_v1(step=step, reason=reason):
            return {
                "compensation_failures": bundle.compensation_failures + 1,
                "last_error": f"{step}: {reason}",
            }
        case VipBundleFailed_v1() | VipBundleCancelled_v1():
            if pending_compensations(bundle):
                raise IllegalTransition("compensations are still pending")
            return {}
        case VipBundleCancellationRequested_v1(reason=reason, from_status=from_status):
            if from_status != bundle.status:
                raise IllegalTransition(
                    f"cancel decided for {from_status}, bundle is {bundle.status}"
                )
            cancellation = Cancellation(
                reason=reason,
                requested_at=event.header.published_at,
                from_status=bundle.status,
                requested_by=event.requested_by,
            )
            return {"cancellation": cancellation}
        case RollbackResumed() if bundle.cancellation is not None:
            raise IllegalTransition("a parked cancellation resumes as a cancellation")
        case CancellationResumed() if bundle.cancellation is None:
            raise IllegalTransition("a parked rollback resumes as a rollback")
        case LedgerDriftDetected_v1(
            finding_key=key, kind=kind, description=description, record=record, header=header
        ):
            if any(d.key == key for d in bundle.drift):
                raise IllegalTransition(f"drift {key} is already recorded")
            drift = Drift(
                key=key, kind=kind, description=description, record=record, at=header.published_at
            )
            return {"drift": [*bundle.drift, drift]}
        case _:
            return {}


def _late_outcome(bundle: Bundle, event: Event) -> dict[str, Any]:
    """An awaited booking step reports while the bundle is undoing: record what it booked (to
    be undone), or that it booked nothing; a give-up without an answer leaves it in doubt."""
    match event:
        case BookingMade_v1() | BookingFailed_v1():
            step = Step.SHOW
        case FlightBooked_v1(leg=leg) | FlightBookingFailed_v1(leg=leg):
            step = Step.INBOUND if leg is Leg.INBOUND else Step.RETURN
    if step not in awaited(bundle):
        raise IllegalTransition(f"{step} is not awaited by a {bundle.status} bundle")
    match event:
        case BookingMade_v1(ticket_ids=ids):
            return {"ticket_ids": ids}
        case FlightBooked_v1(leg=leg, ticket_ids=ids):
            return {"flight_tickets": {**bundle.flight_tickets, leg: ids}}
        case BookingFailed_v1(in_doubt=False) | FlightBookingFailed_v1(in_doubt=False):
            return {"booked_nothing": [*bundle.booked_nothing, step]}
    return {}  # given up again without an answer: still in doubt, resolved by re-sending


def _check_leg(bundle: Bundle, leg: Leg) -> None:
    if LEG_BOOKED_FROM[leg] != bundle.status:
        raise IllegalTransition(f"{leg} flight is not the step of a {bundle.status} bundle")


def _detail(event: Event) -> str | None:
    for field in ("reason", "ticket_id", "leg", "finding_key", "by"):
        value = getattr(event, field, None)
        if value is not None:
            return f"{field}={value}"
    return None

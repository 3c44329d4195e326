"""Scenario 2: every message delivered twice.

While bundles run, each step that is due (a forward step, each pending undo, the rollback's
completion) is published twice more as one identical message (same task id), and each failure
event is handed to the process manager twice, as the same message and as a re-published copy
with a new event id. Once all are settled, every message of every bundle is sent twice again
(late duplicates), and every request is submitted again with the same id. Nothing may happen
twice at a partner, and every bundle ends as if each message had come once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from process_manager import saga
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tests.reliability.stack import POOLS, SETTLED, Stack, log_count

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("worker_pool", POOLS)]

BUNDLES = 24  # a third with the return flight sold out
LATENCY_MS = 150  # every partner answer takes this long, so duplicates overlap the originals

Message = tuple[str, list[Any]]


def due_messages(bundle: Bundle) -> list[Message]:
    """The messages the saga would send next for this bundle, by task name."""
    bid = bundle.vip_bundle_id
    forward = {
        Status.INITIALIZED: ("vip_bundle.book_show_tickets", [bid]),
        Status.BOOKING_MADE: ("vip_bundle.book_flight", [bid, "inbound"]),
        Status.INBOUND_BOOKED: ("vip_bundle.book_flight", [bid, "return"]),
        Status.RETURN_BOOKED: ("vip_bundle.finalize", [bid]),
    }
    if bundle.status in forward:
        return [forward[bundle.status]]
    if bundle.status is not Status.ROLLING_BACK:
        return []
    undo: list[Message] = []
    tickets: list[str] = []
    for command in saga.pending_compensations(bundle):
        if leg := getattr(command, "leg", None):
            undo.append(("vip_bundle.compensation.cancel_flight_tickets", [bid, str(leg)]))
        else:
            tickets.append(command.ticket_id)
    if tickets:  # the process manager sends a bundle's refunds as one task
        undo.append(("vip_bundle.compensation.refund_tickets", [bid, tickets]))
    return [*undo, ("vip_bundle.compensation.complete_rollback", [bid])]


def every_message(bundle: Bundle) -> list[Message]:
    """Every step message a bundle's saga can ever send."""
    bid = bundle.vip_bundle_id
    return [
        ("vip_bundle.book_show_tickets", [bid]),
        *[("vip_bundle.book_flight", [bid, str(leg)]) for leg in Leg],
        ("vip_bundle.finalize", [bid]),
        ("vip_bundle.compensation.refund_tickets", [bid, bundle.ticket_ids]),
        *[("vip_bundle.compensation.refund_ticket", [bid, t]) for t in bundle.ticket_ids],
        *[("vip_bundle.compensation.cancel_flight_tickets", [bid, str(leg)]) for leg in Leg],
        ("vip_bundle.compensation.complete_rollback", [bid]),
    ]


FAILURES = {"BookingFailed_v1", "FlightBookingFailed_v1"}


def failure_event(st: Stack, bundle_id: str) -> dict[str, Any] | None:
    """The bundle's failure event as the process manager received it (from the stream)."""
    for _, entry in st.redis.xrange(st.store.stream):
        mine = entry[b"vip_bundle_id"].decode() == bundle_id
        if mine and entry[b"event_name"].decode() in FAILURES:
            return json.loads(entry[b"data"])
    return None


class Duplicator:
    def __init__(self, st: Stack) -> None:
        self.st = st
        self.sent: Counter[str] = Counter()

    def twice(self, task: str, args: list[Any]) -> None:
        """One message published twice: same task id, same body."""
        task_id = str(uuid.uuid4())
        for _ in range(2):
            self.st.send(task, *args, task_id=task_id)
        self.sent[task] += 2

    def event_twice(self, message: dict[str, Any]) -> None:
        task = "vip_bundle.process_manager.handle_event"
        self.twice(task, [message])
        copy = {**message, "header": {**message["header"], "event_id": str(uuid.uuid4())}}
        self.st.send(task, copy)  # the same fact re-published by someone else
        self.sent[task] += 1


def test_each_message_twice_changes_nothing(make_stack, record):
    st = make_stack("duplicates")
    st.start_worker("a", concurrency=4)
    st.start_worker("b", concurrency=2)
    st.sim.set_latency(LATENCY_MS)
    sold_out = st.book_mix(BUNDLES)
    dup = Duplicator(st)

    # While they run: each message due in each state they are seen in, twice more.
    seen: set[tuple[str, int]] = set()
    events_doubled: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        bundles = [b for i in st.submitted if (b := st.store.get(i)) is not None]
        if len(bundles) == BUNDLES and all(b.status in SETTLED for b in bundles):
            break
        for bundle in bundles:
            if (bundle.vip_bundle_id, bundle.version) in seen:
                continue
            seen.add((bundle.vip_bundle_id, bundle.version))
            for task, args in due_messages(bundle):
                dup.twice(task, args)
            first_rollback = bundle.vip_bundle_id not in events_doubled
            if bundle.status is Status.ROLLING_BACK and first_rollback:
                events_doubled.add(bundle.vip_bundle_id)
                dup.event_twice(failure_event(st, bundle.vip_bundle_id) or {})
        time.sleep(0.03)
    st.wait(timeout=60)
    live = Counter(dup.sent)

    # Late duplicates: everything again, twice, once all are settled; and every request again.
    for bundle_id in st.submitted:
        bundle = st.bundle(bundle_id)
        for task, args in every_message(bundle):
            dup.twice(task, args)
        if (event := failure_event(st, bundle_id)) is not None:
            dup.event_twice(event)
        body = {
            "vip_bundle_id": bundle_id,
            "customer_email": bundle.customer_email,
            "number_of_tickets": bundle.number_of_tickets,
            "show_id": bundle.show_id,
            "passengers": bundle.passengers,
            "inbound_flight_id": bundle.inbound_flight_id,
            "return_flight_id": bundle.return_flight_id,
        }
        assert st.send_book(body).get(timeout=30)["vip_bundle_id"] == bundle_id
        dup.sent["vip_bundle.book (same id again)"] += 1
    quiet_until_drained(st)
    statuses = st.wait(timeout=60)
    report = st.check()
    workers = st.workers
    record(
        "2-duplicates",
        "Duplicate delivery",
        report,
        faults=[
            f"partner latency {LATENCY_MS} ms so duplicates overlap the originals",
            f"while running: each due step, undo and completion published twice more as one "
            f"identical message (same task id): {sum(live.values())} extra messages",
            "each failure event to the process manager twice (same message) and once "
            "re-published with a new event id",
            f"after settling: every step message of every bundle twice, every failure event "
            f"again, every request again with its id: {sum((dup.sent - live).values())} messages",
        ],
        bundles=len(st.submitted),
        duplicates_sent=dict(dup.sent),
        skipped_as_done=sum(log_count(w, ": skipped, bundle") for w in workers),
        lost_the_race=sum(log_count(w, ": result not recorded") for w in workers),
        events_seen_before=sum(log_count(w, "seen before, skipped") for w in workers),
    )

    expected = {i: Status.FAILED if i in sold_out else Status.FINALIZED for i in st.submitted}
    assert statuses == expected, str(report)
    assert report.violations == [], str(report)


def quiet_until_drained(st: Stack, timeout: float = 60) -> None:
    """Wait until the queues are empty and nothing has been received for a moment."""
    queues = ["vip-bundles", "vip-bundles.booking", "vip-bundles.compensation"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(st.redis.llen(q) for q in queues) and not st.redis.hlen("unacked"):
            return
        time.sleep(0.2)

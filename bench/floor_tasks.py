"""The floor: the saga's design with none of the saga's own code, to tell the two costs apart.

The saga's shape (an intake task whose answer the caller reads, then a chain of three steps,
each with an error callback) and the Redis work its guarantees need, run by the store's own
scripts: the creation script; per step a guarded start (status checked, start counted, the
partner gate asked, the bundle returned) and a transition (version checked, document, status
index and event stream written), the return step's transition finalizing too. What it leaves
out is everything the saga computes: validation, the domain's decisions, parsing and building
documents and events.
Each script's arguments are prepared once per process from a real bundle's documents, and
the scripts are the store's own (`BundleStore` under a prefix of the floor's).

So `floor / chain` is the best throughput any implementation of this design can reach here,
and `saga / floor` is what the saga's own code adds to it (`python -m bench.ab floor`).
Loaded only by the benchmark's worker, as `bench.baseline_tasks` is.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import cache
from typing import Any, NamedTuple

from celery import chain
from celery.signals import worker_process_init

from adapters.settings import get_settings
from adapters.store import MOVES_TTL_S, BundleStore
from adapters.store_queries import as_text
from bench.baseline_tasks import book_flight, book_show
from process_manager import saga, transition
from process_manager.bundle import IN_FLIGHT, Bundle, Status
from process_manager.messages import Leg, parse_request
from process_manager.versions import DOCUMENT, RELEASE
from tasks.celery_app import app, redis_client

REQUEST: dict[str, Any] = {
    "customer_email": "bench@example.com",
    "number_of_tickets": 2,
    "show_id": "00000000-0000-4000-8000-000000000001",
    "passengers": ["Ann Lee", "Bob Lee"],
    "inbound_flight_id": "00000000-0000-4000-8000-000000000002",
    "return_flight_id": "00000000-0000-4000-8000-000000000003",
}


@cache
def floor_store() -> BundleStore:
    """Keys of the floor's own (`<prefix>floor:...`): its bundles never reach the saga's indexes.

    One per process, as the saga's store: made on first use, anew after a fork.
    """
    return BundleStore(redis_client(), prefix=f"{get_settings().key_prefix}floor:")


@worker_process_init.connect
def _fresh_store_after_fork(**_: object) -> None:
    floor_store.cache_clear()


def events_stream() -> str:
    return floor_store().stream


class _Write(NamedTuple):
    """One of the bundle's writes, as the saga makes it: all it needs but the bundle id."""

    doc: str  # the document after it
    events: list[tuple[str, str, str]]  # (name, json, move) per event
    left: Status  # the status it leaves: also the status its step's start requires
    status: Status  # the status it writes
    version: int  # the version it expects (0: creation)


@cache
def _writes() -> dict[str, _Write]:
    """The writes of one real bundle's life, built once per process by the saga's functions."""
    bundle = Bundle.from_request(parse_request({**REQUEST, "vip_bundle_id": str(uuid.uuid4())}))
    steps: dict[str, _Write] = {}

    def write(name: str, before: Bundle | None, after: Bundle, events: list[Any]) -> None:
        rows = []
        for event, entry in zip(events, after.history[-len(events) :], strict=True):
            message = json.dumps(event.to_message(), separators=(",", ":"))
            move = f"{entry.from_status}>{entry.to_status}" if before else ""
            rows.append((event.name(), message if event.published else "", move))
        left, version = (before.status, before.version) if before else (after.status, 0)
        steps[name] = _Write(after.model_dump_json(), rows, left, after.status, version)

    created = transition.apply_initial(bundle, saga.initialized(bundle))
    write("create", None, created, [saga.initialized(bundle)])
    made = transition.apply(created, e := saga.booking_made(created, ["t-1", "t-2"]))
    write("show", created, made, [e])
    inbound = transition.apply(made, e := saga.flight_booked(made, Leg.INBOUND, ["f-1", "f-2"]))
    write("inbound", made, inbound, [e])
    booked = transition.apply(inbound, e := saga.flight_booked(inbound, Leg.RETURN, ["f-3", "f-4"]))
    done = transition.apply(booked, f := saga.finalized(booked))
    write("return", inbound, done, [e, f])
    return steps


def _transition(bundle_id: str, step: str) -> None:
    """The store's transition script, its arguments ready-made (see BundleStore._write)."""
    st, w = floor_store(), _writes()[step]
    now = time.time()
    keys = [
        st._bundle_key(bundle_id),
        st.status_key(w.left),
        st.status_key(w.status),
        st.stream,
        st.event_counts_key,
        st.moves_key(int(now // 60)),
        st.in_flight_key,
    ]
    maxlen = get_settings().events_stream_maxlen
    args: list[Any] = [w.version, w.version + 1, w.doc, str(w.status), now, bundle_id, maxlen]
    args += [MOVES_TTL_S, now, "1" if w.status in IN_FLIGHT else "", 0, "", "", "", DOCUMENT]
    for name, message, move in w.events:
        args += [name, message, move]
    if step == "create":
        args[11] = f"booking-{bundle_id}"
        args[12] = st.tomb_field(bundle_id)
        args[13] = RELEASE  # the creating release, kept beside the document
        keys += [
            st._booking_index(),
            st._email_index(REQUEST["customer_email"]),
            st._correlation_index(bundle_id),
            st.tomb_key(bundle_id),  # the creation script checks the id was not archived
        ]
    if not as_text(st._transition(keys=keys, args=args)).startswith("ok"):
        raise RuntimeError(f"floor bundle {bundle_id}: version moved")


def _start(bundle_id: str, step: str, partner: str) -> None:
    """The store's guarded start: the step counted only if the bundle is where it runs, and
    the partner gate asked for the call (no quota: it says go) in the same script."""
    st = floor_store()
    runs_in = _writes()[step].left
    args = [1, f"starts:{step}", "0", DOCUMENT, 0, "1", runs_in]
    reply = st._start(keys=[st._bundle_key(bundle_id), f"{st.prefix}partner:{partner}"], args=args)
    if not reply:
        raise RuntimeError(f"floor bundle {bundle_id}: not due for {step}")


@app.task(name="bench.floor.book")
def book(bundle_id: str, show_id: str, inbound_id: str, return_id: str) -> dict[str, str]:
    _transition(bundle_id, "create")
    flow = chain(show.si(bundle_id, show_id), flight.si(bundle_id, "inbound", inbound_id))
    flow |= flight.si(bundle_id, "return", return_id)
    flow.on_error(failed.s(bundle_id))
    flow.apply_async()
    return {"vip_bundle_id": bundle_id, "booking_id": f"booking-{bundle_id}"}


@app.task(name="bench.floor.show", ignore_result=True)
def show(bundle_id: str, show_id: str) -> None:
    _start(bundle_id, "show", "dead-nation-api")
    book_show(bundle_id, show_id)
    _transition(bundle_id, "show")


@app.task(name="bench.floor.flight", ignore_result=True)
def flight(bundle_id: str, leg: str, flight_id: str) -> None:
    _start(bundle_id, leg, "transportation-api")
    book_flight(bundle_id, leg, flight_id)
    _transition(bundle_id, leg)


@app.task(name="bench.floor.failed", ignore_result=True)
def failed(request: Any, exc: BaseException, traceback: Any, bundle_id: str) -> None:
    """The error callback every step carries (as the saga's do); a floor step never fails."""

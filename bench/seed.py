"""Fill Redis with finalized bundles, fast, for the scale section (1,000 vs 1,000,000 stored).

Each seeded bundle is a real finalized document (built by the saga's own functions, with its
history) under a fresh id and its own customer email, written with the store's key layout: the
bundle hash (version, status, doc), its entry in the `finalized` status index, and the
console's search indexes (booking id, email, correlation id). One pipeline per batch.
"""

from __future__ import annotations

import time
import uuid

import redis

from adapters.store import BundleStore
from process_manager import saga, transition
from process_manager.bundle import Bundle, Status, booking_id_for
from process_manager.messages import Leg, parse_request

BATCH = 2000


def finalized_template(request: dict[str, object]) -> Bundle:
    fresh = Bundle.from_request(parse_request(request))
    bundle = transition.apply_initial(fresh, saga.initialized(fresh))
    tickets = [str(uuid.uuid4()) for _ in range(fresh.number_of_tickets)]
    bundle = transition.apply(bundle, saga.booking_made(bundle, tickets))
    for leg in (Leg.INBOUND, Leg.RETURN):
        legs = [str(uuid.uuid4()) for _ in fresh.passengers]
        bundle = transition.apply(bundle, saga.flight_booked(bundle, leg, legs))
    return transition.apply(bundle, saga.finalized(bundle))


def stored(st: BundleStore) -> int:
    return sum(st.count(s) for s in Status)


def seed(r: redis.Redis, st: BundleStore, target: int, request: dict[str, object]) -> float:
    """Top the store up to `target` bundles; returns the seconds it took."""
    started = time.monotonic()
    missing = max(target - stored(st), 0)
    template = finalized_template(request)
    doc, old_id, old_booking, old_email = (
        template.model_dump_json(),
        template.vip_bundle_id,
        template.booking_id,
        template.customer_email,
    )
    index = st.status_key(Status.FINALIZED)  # the store's own layout, so seeds never drift
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for i in range(missing):
        new_id, email = str(uuid.uuid4()), f"seed-{i}@example.com"
        booking = booking_id_for(new_id)
        body = doc.replace(old_id, new_id).replace(old_booking, booking).replace(old_email, email)
        fields = {"version": template.version, "status": str(Status.FINALIZED), "doc": body}
        at = now - 86_400 * (1 - i / missing)  # spread over a day
        pipe.hset(st._bundle_key(new_id), mapping=fields)
        pipe.zadd(index, {new_id: at})
        pipe.hset(st._booking_index(), booking, new_id)
        pipe.zadd(st._email_index(email), {new_id: at})
        pipe.zadd(st._correlation_index(new_id), {new_id: at})  # the bundle id serves
        if (i + 1) % BATCH == 0:
            pipe.execute()
    pipe.execute()
    return time.monotonic() - started

"""The invariant checker catches what it claims to (fast: no worker, planted partner state)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from adapters.partners import Partners
from adapters.store import BundleStore
from partner_simulator.server import SimulatorClient, SimulatorServer
from process_manager import saga
from process_manager.bundle import Bundle
from process_manager.messages import BookVipBundle, Leg
from tests.reliability.invariants import check


@pytest.fixture
def world(redis_url: str) -> Iterator[tuple[BundleStore, SimulatorClient, Partners]]:
    prefix = f"vip-bundles-invariants-{uuid.uuid4().hex[:6]}:"
    redis = Redis.from_url(redis_url)
    with SimulatorServer() as server, server.client() as sim:
        partners = Partners(server.url, attempts=1)
        yield BundleStore(redis, prefix=prefix), sim, partners
        partners.close()
    for key in redis.scan_iter(match=f"{prefix}*"):
        redis.delete(key)


def stored(store: BundleStore) -> Bundle:
    request = BookVipBundle(
        customer_email="ann@example.com",
        number_of_tickets=1,
        show_id=uuid.uuid4(),
        passengers=["Ann Lee"],
        inbound_flight_id=uuid.uuid4(),
        return_flight_id=uuid.uuid4(),
    )
    fresh = Bundle.from_request(request)
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    return bundle


def book_flight(p: Partners, b: Bundle, leg: Leg, key: str) -> list[str]:
    return p.book_flight(
        customer_email=b.customer_email,
        flight_id=b.flight_id(leg),
        passenger_names=b.passengers,
        reference_id=b.vip_bundle_id,
        idempotency_key=key,
    )


def finalized(store: BundleStore, p: Partners) -> Bundle:
    b = stored(store)
    tickets = p.book_show_tickets(
        booking_id=b.booking_id,
        customer_address=b.customer_email,
        event_id=b.show_id,
        number_of_tickets=1,
    )
    events = [
        lambda b: saga.booking_made(b, tickets),
        lambda b: saga.flight_booked(b, Leg.INBOUND, book_flight(p, b, Leg.INBOUND, "in")),
        lambda b: saga.flight_booked(b, Leg.RETURN, book_flight(p, b, Leg.RETURN, "ret")),
        saga.finalized,
    ]
    for event in events:
        b = store.apply(b.vip_bundle_id, event).bundle
    return b


def test_a_clean_world_has_no_violation(world):
    store, sim, partners = world
    b = finalized(store, partners)
    report = check(store, sim, [b.vip_bundle_id])
    assert report.violations == []
    assert (report.counts.bundles, report.counts.finalized) == (1, 1)


def test_planted_faults_are_each_counted(world):
    store, sim, partners = world
    b = finalized(store, partners)
    book_flight(partners, b, Leg.INBOUND, "another key")  # booked twice: leaked, duplicated
    ticket = b.ticket_ids[0]
    for key in ("refund-1", "refund-2"):  # refunded twice under two keys
        partners.refund(payment_reference=ticket, reason="x", deduplication_id=key)
    stuck = stored(store)
    never_stored = str(uuid.uuid4())

    report = check(store, sim, [b.vip_bundle_id, stuck.vip_bundle_id, never_stored])
    c = report.counts
    assert (c.bundles, c.finalized, c.stuck, c.lost) == (2, 1, 1, 1)
    assert c.leaked_flights == 1
    assert c.duplicated_effects == 1  # two tickets on one flight for one passenger
    assert c.double_refunds == 1
    assert any("refunded or voided" in v for v in report.violations)  # finalized, yet refunded


def test_a_cancelled_bundle_is_checked_like_a_failed_one(world):
    store, sim, partners = world
    b = finalized(store, partners)
    cancel = saga.cancel(b, "test")
    b = store.apply(b.vip_bundle_id, lambda _: cancel).bundle  # type: ignore[arg-type,return-value]
    # Only the return leg is undone; the inbound tickets and the show ticket are left.
    for ticket_id in b.flight_tickets[Leg.RETURN]:
        partners.cancel_flight_ticket(ticket_id)
    b = store.apply(
        b.vip_bundle_id,
        lambda b: saga.flight_tickets_cancelled(b, Leg.RETURN, b.flight_tickets[Leg.RETURN]),
    ).bundle
    # Planted: marked cancelled without the remaining undos (the saga itself refuses this).
    done = b.model_copy(update={"status": saga.S.CANCELLED, "version": b.version + 1})
    assert store.save(b, done, None)

    report = check(store, sim, [b.vip_bundle_id])
    c = report.counts
    assert (c.bundles, c.cancelled) == (1, 1)
    assert c.leaked_flights == 1  # the inbound leg is still booked
    assert c.leaked_show_tickets == 1  # the show ticket is not refunded
    assert any("receipts not voided" in v for v in report.violations)
    assert any("last event" in v for v in report.violations)

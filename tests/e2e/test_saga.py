"""The saga end to end: a real worker process, real Redis, the partner simulator over HTTP."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from process_manager.bundle import Status
from process_manager.messages import Leg
from tasks.celery_app import store
from tests.helpers import Saga, request

FORWARD_EVENTS = ["VipBundleInitialized_v1", "BookingMade_v1", "FlightBooked_v1"]


def test_happy_path_finalizes_and_books_everything_once(saga: Saga):
    body = request()
    bundle = saga.run(body)

    assert bundle.status is Status.FINALIZED
    assert len(bundle.ticket_ids) == 2
    assert [len(bundle.flight_tickets[leg]) for leg in Leg] == [2, 2]
    assert saga.events(bundle.vip_bundle_id) == [
        *FORWARD_EVENTS,
        "FlightBooked_v1",
        "VipBundleFinalized_v1",
    ]
    (booking,) = saga.calls(bundle, "/dead-nation-api")
    assert booking["body"]["booking_id"] == bundle.booking_id
    assert booking["headers"]["idempotency-key"] == bundle.booking_id
    flights = saga.calls(bundle, "/transportation-api/flight-tickets")
    assert [c["body"]["flight_id"] for c in flights] == [
        body["inbound_flight_id"],
        body["return_flight_id"],
    ]
    assert all(c["headers"]["idempotency-key"] == c["body"]["idempotency_key"] for c in flights)
    assert saga.calls(bundle, "/payments-api") == []
    assert [h.to_status for h in bundle.history][-1] is Status.FINALIZED


def test_inbound_sold_out_refunds_each_ticket_once_and_cancels_nothing(saga: Saga):
    body = request()
    saga.sim.set_flight_seats(body["inbound_flight_id"], 0)
    bundle = saga.run(body)

    assert bundle.status is Status.FAILED
    assert sorted(bundle.refunded_ticket_ids) == sorted(bundle.ticket_ids)
    refunds = saga.calls(bundle, "/payments-api/refunds")
    assert sorted(c["body"]["payment_reference"] for c in refunds) == sorted(bundle.ticket_ids)
    voids = saga.calls(bundle, "/receipts-api/void-receipt")
    assert sorted(c["body"]["ticket_id"] for c in voids) == sorted(bundle.ticket_ids)
    assert [c for c in saga.calls(bundle, "/transportation-api") if c["method"] == "DELETE"] == []
    assert saga.events(bundle.vip_bundle_id) == [
        "VipBundleInitialized_v1",
        "BookingMade_v1",
        "FlightBookingFailed_v1",
        "TicketRefunded_v1",
        "TicketRefunded_v1",
        "VipBundleFailed_v1",
    ]
    assert bundle.failure is not None and bundle.failure.step == "book_inbound_flight"


def test_return_sold_out_cancels_the_inbound_flight_and_refunds(saga: Saga):
    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    bundle = saga.run(body)

    assert bundle.status is Status.FAILED
    assert bundle.cancelled_legs == [Leg.INBOUND]
    inbound = bundle.flight_tickets[Leg.INBOUND]
    left = saga.sim.flight_tickets(reference_id=bundle.vip_bundle_id)
    assert sorted(t["ticket_id"] for t in left) == sorted(inbound)
    assert all(t["cancelled"] for t in left)
    assert len(saga.calls(bundle, "/payments-api/refunds")) == 2
    events = saga.events(bundle.vip_bundle_id)
    assert events[:4] == [*FORWARD_EVENTS, "FlightBookingFailed_v1"]
    # The undo steps run in parallel: any order, each once, then the bundle fails.
    assert sorted(events[4:-1]) == [
        "FlightTicketsCancelled_v1",
        "TicketRefunded_v1",
        "TicketRefunded_v1",
    ]
    assert events[-1] == "VipBundleFailed_v1"


def test_show_sold_out_fails_with_nothing_to_undo(saga: Saga):
    body = request()
    saga.sim.set_show_seats(body["show_id"], 1)
    bundle = saga.run(body)

    assert bundle.status is Status.FAILED
    assert saga.events(bundle.vip_bundle_id) == [
        "VipBundleInitialized_v1",
        "BookingFailed_v1",
        "VipBundleFailed_v1",
    ]
    assert saga.calls(bundle, "/payments-api") == []
    assert saga.calls(bundle, "/transportation-api") == []


def test_partner_503_twice_then_success_finishes_without_duplicate_effects(saga: Saga):
    body = request()
    saga.sim.fault("/transportation-api/flight-tickets", status=503, times=2)
    saga.sim.fault("/dead-nation-api", status=503, times=2)
    bundle = saga.run(body)

    assert bundle.status is Status.FINALIZED
    tickets = saga.sim.flight_tickets(reference_id=bundle.vip_bundle_id)
    assert len(tickets) == 4  # two passengers, two legs: booked once each
    faulted = [c for c in saga.sim.calls() if c.get("fault")]
    assert len(faulted) >= 4
    assert len(saga.calls(bundle, "/dead-nation-api")) == 1


def test_same_bundle_submitted_twice_is_one_saga(saga: Saga):
    bundle_id = str(uuid.uuid4())
    body = request(vip_bundle_id=bundle_id)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: saga.book(body), range(4)))

    assert {a["vip_bundle_id"] for a in answers} == {bundle_id}
    assert len({a["booking_id"] for a in answers}) == 1
    bundle = saga.wait(bundle_id)
    assert bundle.status is Status.FINALIZED
    assert saga.events(bundle_id).count("VipBundleInitialized_v1") == 1
    assert len(saga.calls(bundle, "/dead-nation-api")) == 1
    assert len(saga.sim.flight_tickets(reference_id=bundle_id)) == 4


def test_same_id_with_another_request_is_refused(saga: Saga):
    bundle_id = str(uuid.uuid4())
    saga.book(request(vip_bundle_id=bundle_id))
    with pytest.raises(Exception, match="vip_bundle_id"):
        saga.book(request(vip_bundle_id=bundle_id, number_of_tickets=3))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"customer_email": ...}, "customer_email"),
        ({"customer_email": "not an email"}, "customer_email"),
        ({"number_of_tickets": 0}, "number_of_tickets"),
        ({"passengers": []}, "passengers"),
        ({"extra": "x"}, "extra"),
    ],
)
def test_invalid_requests_are_refused_naming_the_field_and_store_nothing(saga, changes, field):
    bundle_id = str(uuid.uuid4())
    body = {k: v for k, v in request(vip_bundle_id=bundle_id, **changes).items() if v is not ...}
    with pytest.raises(Exception, match=field) as caught:
        saga.book(body)
    assert "InvalidRequest" in type(caught.value).__name__
    assert store().get(bundle_id) is None
    # The worker keeps serving.
    assert saga.run(request()).status is Status.FINALIZED


def test_a_show_booking_given_up_in_doubt_is_resolved_and_refunded(saga: Saga, simulator):
    """No longer a known limit: the seller booked the tickets but the saga never got the
    answer and gave up. The rollback re-sends the booking with the same `booking_id`, learns
    the tickets from the seller's first answer, and refunds them."""
    from adapters.partners import Partners
    from process_manager import saga as rules
    from tasks.steps import show_booking
    from tasks.take_up import take_up

    body = request()
    seats = saga.sim.show_seats(body["show_id"])
    saga.sim.fault("/dead-nation-api", status=503, rate=1.0)  # the step fails, bundle waits
    bundle_id = saga.book(body)["vip_bundle_id"]
    deadline = time.monotonic() + 30
    while (waiting := store().require(bundle_id)).step_failures < 1:
        assert time.monotonic() < deadline, "the show step never failed"
        time.sleep(0.05)
    assert waiting.status is Status.INITIALIZED
    saga.sim.clear_faults()
    # What the seller did with a call whose answer was lost: booked, under the bundle's key.
    partners = Partners(simulator.url, attempts=1)
    try:
        booked = partners.book_show_tickets(**show_booking(waiting))
    finally:
        partners.close()
    applied = store().apply(bundle_id, lambda b: rules.booking_failed(b, "gave up", in_doubt=True))
    assert applied.bundle.status is Status.ROLLING_BACK
    take_up(applied.bundle)

    bundle = saga.wait(bundle_id)
    assert bundle.status is Status.FAILED
    assert sorted(bundle.ticket_ids) == sorted(booked)
    assert sorted(bundle.refunded_ticket_ids) == sorted(booked)
    assert seats - saga.sim.show_seats(body["show_id"]) == len(booked)  # booked once
    refunded = [r["payment_reference"] for r in saga.sim.refunds()]
    assert sorted(t for t in refunded if t in booked) == sorted(booked)
    assert saga.events(bundle_id)[-1] == "VipBundleFailed_v1"

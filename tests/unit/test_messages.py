"""Request validation and the event wire format."""

from __future__ import annotations

import uuid

import pytest

from process_manager.messages import (
    FlightBookingFailed_v1,
    InvalidRequest,
    Leg,
    parse_event,
    parse_request,
)
from process_manager.messages import example_request as valid


def fields_of(exc: InvalidRequest) -> set[str]:
    return {e["field"] for e in exc.errors}


def test_accepts_a_valid_request_without_an_id():
    request = parse_request(valid())
    assert request.vip_bundle_id is None
    assert request.number_of_tickets == 2


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"customer_email": ...}, "customer_email"),
        ({"customer_email": "not-an-email"}, "customer_email"),
        ({"number_of_tickets": 0}, "number_of_tickets"),
        ({"number_of_tickets": 21}, "number_of_tickets"),
        ({"number_of_tickets": "2"}, "number_of_tickets"),
        ({"passengers": []}, "passengers"),
        ({"passengers": ["Ann", "  "]}, "passengers.1"),
        ({"passengers": ["A", "B", "C"]}, "passengers"),
        ({"show_id": "nope"}, "show_id"),
        ({"vip_bundle_id": "nope"}, "vip_bundle_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_refuses_bad_input_naming_the_field(changes, field):
    with pytest.raises(InvalidRequest) as caught:
        parse_request(valid(**changes))
    assert field in fields_of(caught.value)
    assert field.split(".")[0] in str(caught.value)


def test_names_every_bad_field_at_once():
    with pytest.raises(InvalidRequest) as caught:
        parse_request(valid(customer_email="x", number_of_tickets=0, show_id=...))
    assert {"customer_email", "number_of_tickets", "show_id"} <= fields_of(caught.value)


def test_same_flight_both_ways_is_refused():
    flight = str(uuid.uuid4())
    with pytest.raises(InvalidRequest) as caught:
        parse_request(valid(inbound_flight_id=flight, return_flight_id=flight))
    assert "return_flight_id" in fields_of(caught.value)


def test_not_an_object_is_refused():
    with pytest.raises(InvalidRequest):
        parse_request(["a", "list"])


def test_events_round_trip_with_their_header():
    event = FlightBookingFailed_v1.create(
        correlation_id="c",
        key="b:flight-booking-failed-return",
        vip_bundle_id="b",
        leg=Leg.RETURN,
        flight_id="f",
        reason="409",
    )
    message = event.to_message()
    assert set(message["header"]) == {
        "event_id",
        "event_name",
        "published_at",
        "correlation_id",
        "idempotency_key",
        "schema_version",
    }
    assert message["header"]["event_name"] == "FlightBookingFailed_v1"
    assert parse_event(message) == event


def test_unknown_events_are_refused():
    with pytest.raises(InvalidRequest):
        parse_event({"header": {"event_name": "Nope_v9"}, "payload": {}})


def test_cross_field_rules_are_named_alongside_other_bad_fields():
    flight = str(uuid.uuid4())
    with pytest.raises(InvalidRequest) as caught:
        parse_request(
            valid(
                customer_email="x",
                inbound_flight_id=flight,
                return_flight_id=flight,
                number_of_tickets=1,
            )
        )
    assert {"customer_email", "return_flight_id", "passengers"} <= fields_of(caught.value)

"""The version rules (process_manager/versions.py): readers accept the previous version and the
current one, refuse a newer one as `NewerSchema`, and every write is in the current shape."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from process_manager import saga, transition, versions
from process_manager.bundle import Bundle
from process_manager.messages import FlightBookingFailed_v1, Leg, parse_event
from process_manager.requests import InvalidRequest
from process_manager.versions import NewerSchema, OlderSchema
from tests.factories import fresh_bundle, new_bundle

ROOT = Path(__file__).resolve().parents[2]
# What the previous release (no versions) knew of a bundle document: it writes only these.
V1_FIELDS = set(Bundle.model_fields) - {"schema_version", "created_by_release", "moved_by_release"}


def as_previous_release_writes(bundle: Bundle) -> dict:
    """The document as a release before 0.2.0 rewrites it: its model ignores fields it does
    not know, so they are gone (what tests/reliability/test_mixed_fleet.py shows for real)."""
    doc = json.loads(bundle.model_dump_json())
    return {k: v for k, v in doc.items() if k in V1_FIELDS}


def test_release_is_the_package_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == versions.RELEASE


def test_the_previous_release_is_named_and_is_a_commit():
    named = (ROOT / "deploy" / "previous-release").read_text().split()[0]
    assert len(named) == 40 and int(named, 16) >= 0


def test_a_new_bundle_records_this_release_in_the_current_shape():
    bundle = new_bundle()
    assert bundle.schema_version == versions.DOCUMENT
    assert bundle.created_by_release == bundle.moved_by_release == versions.RELEASE
    doc = json.loads(bundle.model_dump_json())
    assert doc["schema_version"] == versions.DOCUMENT


def test_every_transition_writes_the_current_shape_and_keeps_the_creator():
    older = Bundle.from_document(as_previous_release_writes(new_bundle()))
    assert older.schema_version == versions.ABSENT
    moved = transition.apply(older, saga.booking_made(older, ["t1", "t2"]))
    assert moved.schema_version == versions.DOCUMENT
    assert moved.moved_by_release == versions.RELEASE
    assert moved.created_by_release is None  # unknown: nothing kept it (see the store's)


def test_a_previous_release_document_is_read_as_version_1():
    doc = as_previous_release_writes(new_bundle())
    bundle = Bundle.from_document(json.dumps(doc), created_by="0.2.0")
    assert bundle.schema_version == 1
    # The creator survives beside the document (the bundle's hash); who moved it last is not
    # known: a release that records none.
    assert bundle.created_by_release == "0.2.0"
    assert bundle.moved_by_release is None
    assert versions.release_label(bundle.moved_by_release) == versions.UNRECORDED


def test_a_document_of_the_current_version_round_trips():
    bundle = new_bundle()
    again = Bundle.from_document(bundle.model_dump_json(), created_by="someone else")
    assert again == bundle  # the document's own creator wins over the copy beside it


def test_a_newer_document_is_refused_with_its_bundle_and_version():
    doc = json.loads(new_bundle().model_dump_json())
    doc.update(schema_version=versions.DOCUMENT + 1, a_field_of_the_future={"x": 1})
    with pytest.raises(NewerSchema) as caught:
        Bundle.from_document(json.dumps(doc))
    assert caught.value.bundle_id == doc["vip_bundle_id"]
    assert caught.value.version == versions.DOCUMENT + 1
    assert "newer worker" in str(caught.value)


@pytest.mark.parametrize(("value", "error"), [(0, OlderSchema), ("two", ValueError)])
def test_an_older_or_garbled_version_is_refused(value: object, error: type[Exception]):
    doc = {**json.loads(new_bundle().model_dump_json()), "schema_version": value}
    with pytest.raises(error):
        Bundle.from_document(doc)


def failed_event_message() -> dict:
    event = FlightBookingFailed_v1.create(
        correlation_id="c", key="b:x", vip_bundle_id="b", leg=Leg.RETURN, flight_id="f", reason="x"
    )
    return event.to_message()


def test_events_carry_their_version_and_the_previous_shape_is_read():
    message = failed_event_message()
    assert message["header"]["schema_version"] == versions.EVENT
    del message["header"]["schema_version"]  # as the previous release sends it
    assert parse_event(message).header.schema_version == versions.ABSENT


def test_a_newer_event_is_refused_as_newer_not_as_invalid():
    message = failed_event_message()
    message["header"]["schema_version"] = versions.EVENT + 1
    with pytest.raises(NewerSchema) as caught:
        parse_event(message)
    assert caught.value.bundle_id == "b"
    message["header"]["schema_version"] = "garbled"
    with pytest.raises(InvalidRequest):
        parse_event(message)


def test_a_fresh_bundle_is_written_only_through_the_transitions():
    # Built from a request it has no release yet: the first transition gives it one.
    assert fresh_bundle().created_by_release is None

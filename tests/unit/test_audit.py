"""The audit's comparison of settled bundles with partner records, and drift as a transition."""

from __future__ import annotations

from typing import Any

import pytest

from process_manager import saga, transition
from process_manager.audit import Kind, PartnerRecords, findings
from process_manager.bundle import FINAL, Bundle, Status
from process_manager.messages import LedgerDriftDetected_v1, Leg
from tests.factories import new_bundle


def finalized() -> Bundle:
    b = new_bundle()
    b = transition.apply(b, saga.booking_made(b, ["t1", "t2"]))
    b = transition.apply(b, saga.flight_booked(b, Leg.INBOUND, ["i1", "i2"]))
    b = transition.apply(b, saga.flight_booked(b, Leg.RETURN, ["r1", "r2"]))
    return transition.apply(b, saga.finalized(b))


def failed_after_inbound() -> Bundle:
    """Show tickets t1, t2 and inbound i1, i2 booked, the return flight sold out, all undone."""
    b = new_bundle()
    b = transition.apply(b, saga.booking_made(b, ["t1", "t2"]))
    b = transition.apply(b, saga.flight_booked(b, Leg.INBOUND, ["i1", "i2"]))
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.RETURN, "409"))
    b = transition.apply(b, saga.flight_tickets_cancelled(b, Leg.INBOUND, ["i1", "i2"]))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))
    b = transition.apply(b, saga.ticket_refunded(b, "t2"))
    return transition.apply(b, saga.failed(b))


def ticket(ticket_id: str, ref: str, cancelled: bool) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "flight_id": f"flight-of-{ticket_id}",
        "reference_id": ref,
        "passenger_name": "Ann Lee",
        "customer_email": "ann@example.com",
        "cancelled": cancelled,
    }


def refund(ticket_id: str) -> dict[str, Any]:
    return {"payment_reference": ticket_id, "reason": "rollback", "deduplication_id": ticket_id}


def receipt(ticket_id: str, voided: bool = True) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "voided": voided, "void_reason": "rollback" if voided else None}


def clean_records(b: Bundle, cancelled: bool) -> dict[str, list[dict[str, Any]]]:
    """What the partners hold for `b` when all is well (plus another bundle's records)."""
    return {
        "flight_tickets": [ticket(t, b.vip_bundle_id, cancelled) for t in b.flight_ticket_ids()]
        + [ticket("other", "another-bundle", False)],
        "refunds": [refund(t) for t in b.ticket_ids] if cancelled else [],
        "receipts": [receipt(t, voided=cancelled) for t in b.ticket_ids],
    }


def audit(b: Bundle, records: dict[str, list[dict[str, Any]]]) -> list[tuple[Kind, str]]:
    return [(f.kind, f.key) for f in findings(b, PartnerRecords.index(**records))]


# -- clean cases ----------------------------------------------------------------------------------


def test_a_finalized_bundle_whose_flight_tickets_are_active_is_clean():
    b = finalized()
    assert audit(b, clean_records(b, cancelled=False)) == []


def test_a_failed_bundle_with_everything_undone_is_clean():
    b = failed_after_inbound()
    assert audit(b, clean_records(b, cancelled=True)) == []


def test_a_failed_bundle_that_booked_nothing_is_clean_with_empty_lists():
    b = new_bundle()
    b = transition.apply(b, saga.booking_failed(b, "sold out"))
    b = transition.apply(b, saga.failed(b))
    assert audit(b, {}) == []


@pytest.mark.parametrize(
    "status", [Status.INITIALIZED, Status.ROLLING_BACK, Status.COMPENSATION_FAILED]
)
def test_bundles_not_settled_are_not_audited(status: Status):
    b = failed_after_inbound().model_copy(update={"status": status})
    assert audit(b, {}) == []


# -- a failed or cancelled bundle -----------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_a_flight_ticket_still_active_under_the_reference_is_found(status: Status):
    b = failed_after_inbound().model_copy(update={"status": status})
    records = clean_records(b, cancelled=True)
    records["flight_tickets"][1] = ticket("i2", b.vip_bundle_id, cancelled=False)

    (found,) = findings(b, PartnerRecords.index(**records))

    assert found.kind is Kind.FLIGHT_TICKET_ACTIVE
    assert found.key == "flight_ticket_active:i2"
    assert found.vip_bundle_id == b.vip_bundle_id and found.status is status
    assert found.record == ticket("i2", b.vip_bundle_id, cancelled=False)
    assert "i2" in found.description and str(status) in found.description


def test_a_flight_booked_without_an_answer_is_found_by_its_reference():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["flight_tickets"].append(ticket("leaked", b.vip_bundle_id, cancelled=False))
    assert audit(b, records) == [(Kind.FLIGHT_TICKET_ACTIVE, "flight_ticket_active:leaked")]


def test_a_booked_flight_ticket_listed_under_another_reference_is_still_checked():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["flight_tickets"][0] = ticket("i1", "someone-else", cancelled=False)
    assert audit(b, records) == [(Kind.FLIGHT_TICKET_ACTIVE, "flight_ticket_active:i1")]


def test_a_show_ticket_without_a_refund_is_found():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["refunds"] = [refund("t1"), refund("not-ours")]

    (found,) = findings(b, PartnerRecords.index(**records))

    assert (found.kind, found.key) == (Kind.REFUND_MISSING, "refund_missing:t2")
    assert found.record == {"payment_reference": "t2"}


def test_a_receipt_not_voided_is_found_with_the_receipt():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["receipts"][0] = receipt("t1", voided=False)

    (found,) = findings(b, PartnerRecords.index(**records))

    assert (found.kind, found.key) == (Kind.RECEIPT_NOT_VOIDED, "receipt_not_voided:t1")
    assert found.record == receipt("t1", voided=False)


def test_a_receipt_missing_from_the_list_is_found():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["receipts"] = records["receipts"][1:]
    assert audit(b, records) == [(Kind.RECEIPT_MISSING, "receipt_missing:t1")]


def test_every_problem_of_one_bundle_is_its_own_finding():
    b = failed_after_inbound()
    records = clean_records(b, cancelled=True)
    records["flight_tickets"] = [ticket(t, b.vip_bundle_id, False) for t in ("i1", "i2")]
    records["refunds"] = []
    records["receipts"] = [receipt("t1", voided=False), receipt("t2", voided=False)]
    assert sorted(k for _, k in audit(b, records)) == [
        "flight_ticket_active:i1",
        "flight_ticket_active:i2",
        "receipt_not_voided:t1",
        "receipt_not_voided:t2",
        "refund_missing:t1",
        "refund_missing:t2",
    ]


# -- a finalized bundle ---------------------------------------------------------------------------


def test_a_cancelled_flight_ticket_of_a_finalized_bundle_is_found():
    b = finalized()
    records = clean_records(b, cancelled=False)
    records["flight_tickets"][2] = ticket("r1", b.vip_bundle_id, cancelled=True)

    (found,) = findings(b, PartnerRecords.index(**records))

    assert (found.kind, found.key) == (Kind.FLIGHT_TICKET_CANCELLED, "flight_ticket_cancelled:r1")
    assert found.record["cancelled"] is True and "finalized" in found.description


def test_a_flight_ticket_of_a_finalized_bundle_missing_from_the_list_is_found():
    b = finalized()
    records = clean_records(b, cancelled=False)
    del records["flight_tickets"][3]

    (found,) = findings(b, PartnerRecords.index(**records))

    assert (found.kind, found.key) == (Kind.FLIGHT_TICKET_MISSING, "flight_ticket_missing:r2")
    assert found.record == {"ticket_id": "r2", "reference_id": b.vip_bundle_id}


def test_a_finalized_bundle_is_not_held_to_refunds_or_receipts():
    b = finalized()
    records = clean_records(b, cancelled=False)
    records["receipts"] = []
    assert audit(b, records) == []


def test_finding_as_json_names_bundle_kind_key_sentence_and_record():
    b = finalized()
    (found,) = findings(b, PartnerRecords.index(flight_tickets=[]))[:1]
    assert found.to_dict() == {
        "vip_bundle_id": b.vip_bundle_id,
        "status": "finalized",
        "kind": "flight_ticket_missing",
        "key": "flight_ticket_missing:i1",
        "description": found.description,
        "record": {"ticket_id": "i1", "reference_id": b.vip_bundle_id},
    }


# -- drift as a transition: once per finding ------------------------------------------------------


def test_drift_is_recorded_once_and_keeps_the_final_status():
    b = failed_after_inbound()
    records = PartnerRecords.index(**{**clean_records(b, cancelled=True), "refunds": []})
    first, second = findings(b, records)

    event = saga.drift_detected(b, first)
    assert isinstance(event, LedgerDriftDetected_v1)
    assert event.finding_key == "refund_missing:t1" and event.record == first.record
    assert event.header.idempotency_key == f"{b.vip_bundle_id}:drift-refund_missing:t1"
    after = transition.apply(b, event)

    assert after.status is Status.FAILED
    assert [d.key for d in after.drift] == ["refund_missing:t1"]
    assert after.history[-1].event == "LedgerDriftDetected_v1"
    assert after.history[-1].from_status is after.history[-1].to_status is Status.FAILED
    assert after.history[-1].detail == "finding_key=refund_missing:t1"
    assert after.status_since() == b.status_since()  # still settled when it failed
    assert saga.drift_detected(after, first) is None  # the same finding again: nothing
    with pytest.raises(saga.IllegalTransition):
        transition.apply(after, event)  # a redelivered event is refused
    second_event = saga.drift_detected(after, second)
    assert second_event is not None
    assert [d.key for d in transition.apply(after, second_event).drift] == [first.key, second.key]


def test_drift_found_for_a_status_the_bundle_has_left_is_not_recorded():
    b = finalized()
    (found, *_) = findings(b, PartnerRecords.index())
    moved_on = b.model_copy(update={"status": Status.CANCELLED})
    assert saga.drift_detected(moved_on, found) is None


def test_drift_applies_to_every_final_status_and_nothing_else():
    drift_states = {s for (s, e), t in saga.TRANSITIONS.items() if e is LedgerDriftDetected_v1}
    assert drift_states == FINAL
    assert all(t is s for (s, e), t in saga.TRANSITIONS.items() if e is LedgerDriftDetected_v1)

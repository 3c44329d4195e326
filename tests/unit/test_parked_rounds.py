"""A parked bundle retried round after round does not grow its document without end: rounds
without progress are counted on the entries of the previous round."""

from __future__ import annotations

from process_manager import saga, transition
from process_manager.bundle import Bundle, Status
from process_manager.messages import Leg
from tests.factories import new_bundle


def rolling_back() -> Bundle:
    b = new_bundle()
    b = transition.apply(b, saga.booking_made(b, ["t1", "t2"]))
    b = transition.apply(b, saga.flight_booking_failed(b, Leg.INBOUND, "409"))
    assert b.status is Status.ROLLING_BACK
    return b


def park(b: Bundle, reason: str = "payments 503") -> Bundle:
    return transition.apply(b, saga.compensation_failed(b, "refund_ticket", reason))


def test_rounds_without_progress_are_counted_not_appended():
    b = park(rolling_back())
    grown = len(b.history)
    for n in range(50):
        b = transition.apply(b, saga.resume_parked(b))
        assert b.status is Status.ROLLING_BACK
        b = park(b, reason=f"payments 503 #{n}")
        assert b.status is Status.COMPENSATION_FAILED
    assert len(b.history) == grown + 2  # the second round's two entries, counting the rest
    resumed, parked = b.history[-2:]
    assert (resumed.event, parked.event) == ("RollbackResumed", "CompensationFailed_v1")
    assert resumed.repeats == parked.repeats == 49
    assert parked.detail and "#49" in parked.detail and parked.last_at is not None
    assert b.compensation_failures == 51


def test_a_round_with_progress_is_kept_in_full():
    b = park(rolling_back())
    b = transition.apply(b, saga.resume_parked(b))
    b = park(b)
    b = transition.apply(b, saga.resume_parked(b))
    b = transition.apply(b, saga.ticket_refunded(b, "t1"))  # progress: one ticket refunded
    b = park(b)
    events = [h.event for h in b.history[-3:]]
    assert events == ["RollbackResumed", "TicketRefunded_v1", "CompensationFailed_v1"]
    assert all(h.repeats == 0 for h in b.history[-3:])

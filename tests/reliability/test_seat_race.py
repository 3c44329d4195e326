"""Scenario 6: many bundles race for the last seats of one flight.

Every bundle (one passenger each) shares the same show, the same inbound flight and the same
return flight, which has only a few seats left; eight worker processes book them at once.
Exactly as many bundles as there were seats finalize; every other one rolls back cleanly: its
inbound seat is given back and its ticket refunded.
"""

from __future__ import annotations

import uuid

import pytest

from process_manager.bundle import Status

pytestmark = pytest.mark.slow

BUNDLES, SEATS = 40, 6


def test_exactly_as_many_bundles_as_seats_finalize(make_stack, record):
    st = make_stack("seats")
    st.start_worker("a", concurrency=4)
    st.start_worker("b", concurrency=4)
    show, inbound, scarce = (str(uuid.uuid4()) for _ in range(3))
    st.sim.set_show_seats(show, BUNDLES)
    st.limit_flight(inbound, BUNDLES)
    st.limit_flight(scarce, SEATS)
    one = {"number_of_tickets": 1, "passengers": ["Ann Lee"]}
    for _ in range(BUNDLES):
        st.book(show_id=show, inbound_flight_id=inbound, return_flight_id=scarce, **one)

    statuses = st.wait(timeout=180)
    report = st.check()
    left = {"return": st.sim.flight_seats(scarce), "inbound": st.sim.flight_seats(inbound)}
    record(
        "6-seats",
        "Race for the last seats",
        report,
        faults=[
            f"{BUNDLES} bundles of one passenger, all on one show, one inbound flight "
            f"({BUNDLES} seats) and one return flight with {SEATS} seats",
            "two workers, eight processes, all bundles submitted at once",
        ],
        bundles=BUNDLES,
        seats=SEATS,
        seats_left_after=left,
        refused_409=sum(1 for c in st.sim.calls("/transportation-api") if c["status"] == 409),
    )

    assert report.counts.finalized == SEATS, str(report)
    assert list(statuses.values()).count(Status.FAILED) == BUNDLES - SEATS
    assert left == {"return": 0, "inbound": BUNDLES - SEATS}
    assert report.violations == [], str(report)

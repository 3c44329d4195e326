"""The page's view models for cancellation: the diagram stays complete and readable, the
timeline and headline tell a cancellation apart (pure functions, no server)."""

from __future__ import annotations

from process_manager import saga, transition
from process_manager.bundle import Status
from process_manager.messages import Leg, Step
from tests.factories import new_bundle
from vip_bundles import diagram, pages, views


def test_the_diagram_has_every_transition_and_names_every_event():
    d = diagram.diagram(new_bundle())
    pairs = {(e.source, e.target) for e in d["edges"]}
    assert pairs == {(a, b) for (a, _), b in saga.TRANSITIONS.items()}
    shown = {label for e in d["edges"] for label in e.labels}
    for (source, event), target in saga.TRANSITIONS.items():
        name = diagram._short(event)
        edge = next(e for e in d["edges"] if (e.source, e.target) == (source, target))
        assert name in edge.events  # the tooltip names it
        assert name in shown or (source == target and "late booking outcomes" in edge.labels)


def test_cancel_edges_into_cancelling_are_labelled_once():
    d = diagram.diagram(new_bundle())
    requested = [
        e
        for e in d["edges"]
        if e.target == Status.CANCELLING and e.events == ["CancellationRequested"]
    ]
    assert len(requested) == 6  # from the four forward states, finalized and rolling_back
    assert sum(1 for e in requested if e.labels) == 1


def test_every_status_has_a_place_and_no_two_nodes_overlap():
    assert set(diagram.LAYOUT) == set(Status)
    spots = list(diagram.LAYOUT.values())
    for i, (x1, y1) in enumerate(spots):
        for x2, y2 in spots[i + 1 :]:
            assert abs(x1 - x2) >= diagram.NODE_W or abs(y1 - y2) >= diagram.NODE_H
        assert 0 < x1 < diagram.DIAGRAM_W and 0 < y1 < diagram.DIAGRAM_H


def test_timeline_and_headline_of_a_cancellation_with_a_late_outcome():
    b = new_bundle()
    b = transition.apply(b, saga.booking_made(b, ["t1"]))
    step = saga.booking_command(b.vip_bundle_id, Step.INBOUND)
    b = b.model_copy(update={"starts": {saga.start_key(b, step): 1}})
    b = transition.apply(b, saga.cancel(b, "storm", who="cli"))  # type: ignore[arg-type]
    b = transition.apply(b, saga.flight_booked(b, Leg.INBOUND, ["i1"]))  # the held step answers
    rows = pages.timeline(b)
    assert [r["kind"] for r in rows[-2:]] == ["cancel", "late"]
    assert rows[-1]["step"] == "book flight: late outcome, to be undone"
    headline = pages.headline(b)
    assert headline["text"].startswith("Cancelling")
    assert "storm" in headline["text"] and "cli" in headline["text"]
    pending = views.compensations(b)["pending"]
    assert {"step": "cancel_flight_tickets", "leg": "inbound"} in pending
    assert views.bundle_view(b)["cancellation"]["reason"] == "storm"

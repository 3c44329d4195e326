"""The saga's canvas on Celery's in-process worker: what is linked to what, and what the error
callback does with each kind of failure (celery-notes.md, "link_error")."""

from __future__ import annotations

import gc
import time

from celery import Celery

from partner_simulator.server import SimulatorClient
from process_manager.bundle import Bundle, Status
from process_manager.messages import example_request, parse_request
from tasks.celery_app import store
from tasks.intake import book_bundle


def settle(bundle_id: str, timeout: float = 30) -> Bundle:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bundle = store().require(bundle_id)
        if bundle.status in (Status.FINALIZED, Status.FAILED):
            return bundle
        time.sleep(0.02)
    raise AssertionError(store().require(bundle_id))


def events(bundle: Bundle) -> list[str]:
    return [h.event for h in bundle.history]


def start(**changes: object) -> str:
    bundle, _ = book_bundle(parse_request(example_request(**changes)))
    return bundle.vip_bundle_id


def test_the_error_callback_is_registered_where_the_steps_run(celery_app: Celery):
    # A new-style errback must be known to the worker of the failing task (celery#9034).
    for name in ("vip_bundle.on_step_failed", "vip_bundle.book_flight", "celery.ping"):
        assert name in celery_app.tasks


def test_the_chain_runs_show_inbound_return_then_finalizes(celery_worker, sim: SimulatorClient):
    bundle = settle(start())
    assert bundle.status is Status.FINALIZED
    assert events(bundle) == [
        "VipBundleInitialized_v1",
        "BookingMade_v1",
        "FlightBooked_v1",
        "FlightBooked_v1",
        "VipBundleFinalized_v1",
    ]
    assert [h.detail for h in bundle.history if h.event == "FlightBooked_v1"] == [
        "leg=inbound",
        "leg=return",
    ]


def test_a_409_fires_the_error_callback_once_and_the_process_manager_undoes(
    celery_worker, sim: SimulatorClient
):
    request = example_request()
    sim.set_flight_seats(request["return_flight_id"], 0)
    bundle = settle(start(**request))
    assert bundle.status is Status.FAILED
    history = events(bundle)
    assert history.count("FlightBookingFailed_v1") == 1  # never retried, one errback
    assert history[-1] == "VipBundleFailed_v1"
    assert sorted(bundle.refunded_ticket_ids) == sorted(bundle.ticket_ids)
    assert bundle.cancelled_legs == ["inbound"]


def test_a_sold_out_show_fails_with_nothing_to_undo(celery_worker, sim: SimulatorClient):
    request = example_request()
    sim.set_show_seats(request["show_id"], 0)
    bundle = settle(start(**request))
    assert events(bundle) == ["VipBundleInitialized_v1", "BookingFailed_v1", "VipBundleFailed_v1"]


def test_a_technical_failure_is_noted_by_the_callback_not_rolled_back(
    celery_worker, sim: SimulatorClient
):
    sim.fault(path_prefix="/transportation-api", status=503, times=1000)
    bundle_id = start()
    deadline = time.monotonic() + 30
    while "StepFailed" not in events(store().require(bundle_id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    bundle = store().require(bundle_id)
    # The step stays due (the reconciler sends it again); nothing is undone yet.
    assert bundle.status is Status.BOOKING_MADE and bundle.step_failures == 1
    sim.clear_faults()


def test_an_in_process_worker_leaves_the_garbage_collector_alone(celery_worker):
    # Only `celery worker` processes freeze their long-lived objects (tasks/celery_app.py): a
    # process that merely runs tasks in-process (this test session) keeps its collector as is.
    frozen, threshold = gc.get_freeze_count(), gc.get_threshold()
    assert settle(start()).status is Status.FINALIZED
    assert (gc.get_freeze_count(), gc.get_threshold()) == (frozen, threshold)

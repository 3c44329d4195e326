"""A partner answering 429 with Retry-After, through a real worker: the step waits (deferred,
not failed), comes back with the same key, and the bundle finalizes."""

from __future__ import annotations

from process_manager.bundle import Status
from tests.helpers import Saga, request


def test_a_throttled_flight_partner_delays_the_bundle_and_costs_it_nothing(saga: Saga):
    saga.sim.fault("/transportation-api", status=429, times=2, retry_after=1)
    bundle = saga.run(request(), timeout=30)

    assert bundle.status is Status.FINALIZED
    assert bundle.step_failures == 0 and bundle.last_error is None  # a wait is no failure
    assert "StepFailed" not in saga.events(bundle.vip_bundle_id)
    flights = [
        c
        for c in saga.sim.calls(path_prefix="/transportation-api/flight-tickets")
        if (c.get("body") or {}).get("reference_id") == bundle.vip_bundle_id
    ]
    throttled = [c for c in flights if c["status"] == 429]
    assert len(throttled) == 2
    # Sent again with the same key, and not before the Retry-After.
    booked = [c for c in flights if c["status"] in (200, 201)]
    assert {c["body"]["idempotency_key"] for c in throttled} <= {
        c["body"]["idempotency_key"] for c in booked
    }
    for refused in throttled:
        again = next(c for c in booked if c["body"] == refused["body"])
        assert again["at"] - refused["at"] >= 1.0

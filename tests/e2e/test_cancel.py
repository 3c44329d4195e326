"""Cancelling through each door (Celery from a process that imports only celery, HTTP, CLI),
with a real worker, Redis and the partner simulator; checked against the partners' own books.

The race: a forward step is held at the partner (the simulator delays its request) when the
cancel comes. Whatever it books is undone and the bundle ends `cancelled`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from partner_simulator.server import SimulatorClient
from process_manager.bundle import Bundle, Status
from process_manager.messages import Step
from tasks.celery_app import store
from tests import outsider as tests_outsider
from tests.e2e.api_server import api_server
from tests.e2e.test_cli import vip_bundles
from tests.helpers import Saga, request
from vip_bundles import local_stack

FLIGHTS = "/transportation-api/flight-tickets"
SHOWS = "/dead-nation-api/ticket/booking"
# The step that runs in each status, as its start counter is named, and the request it sends.
HELD = {
    "show": (Status.INITIALIZED, "BookShowTickets", SHOWS, "POST"),
    "inbound": (Status.BOOKING_MADE, "BookFlight:inbound", FLIGHTS, "PUT"),
    "return": (Status.INBOUND_BOOKED, "BookFlight:return", FLIGHTS, "PUT"),
}

# Door 1 as an outside service uses it: only celery installed (tests/outsider.py's interpreter)
# and only REDIS_URL. It connects first, then reads the request from stdin, so the cancel can
# be sent the moment a step is held.
OUTSIDER = r"""
import importlib.util, json, os, sys
from celery import Celery

REDIS_URL = os.environ["REDIS_URL"]
app = Celery(broker=REDIS_URL, backend=REDIS_URL)
with app.connection_for_write() as conn:
    conn.ensure_connection()
print("ready", flush=True)
body = json.loads(sys.stdin.readline())
result = app.send_task("vip_bundle.cancel", kwargs=body, queue="vip-bundles")
try:
    out = {"answer": result.get(timeout=30)}
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
ours = ("tasks", "process_manager", "adapters", "vip_bundles", "celeryconfig")
out["importable_ours"] = [m for m in ours if importlib.util.find_spec(m) is not None]
print(json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def interpreter(tmp_path_factory: pytest.TempPathFactory) -> tests_outsider.Outsider:
    return tests_outsider.outsider(tmp_path_factory.mktemp("outsider"))


class Outsider:
    """A separate process with only celery, ready to send one cancel."""

    def __init__(self, interpreter: tests_outsider.Outsider) -> None:
        script = interpreter.workdir / "cancel.py"
        script.write_text(OUTSIDER)
        env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": os.environ["REDIS_URL"]}
        self.proc = subprocess.Popen(
            [str(interpreter.python), "-I", str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=interpreter.workdir,
            env=env,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.proc.stderr

    def cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        stdout, stderr = self.proc.communicate(json.dumps(body) + "\n", timeout=60)
        assert self.proc.returncode == 0, stderr
        out = json.loads(stdout.strip().splitlines()[-1])
        assert out.pop("importable_ours") == []
        return out


@pytest.fixture(scope="module")
def api(worker: local_stack.Worker) -> Iterator[httpx.Client]:
    with api_server() as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


class Doors:
    """Send a cancel through one door; each returns the door's answer as a dict."""

    def __init__(self, api: httpx.Client, interpreter: tests_outsider.Outsider) -> None:
        self.api = api
        self.interpreter = interpreter
        self.outsider: Outsider | None = None

    def prepare(self, door: str) -> None:
        if door == "celery":  # started before the step is held: python + celery take a while
            self.outsider = Outsider(self.interpreter)

    def cancel(self, door: str, bundle_id: str, reason: str) -> dict[str, Any]:
        match door:
            case "celery":
                assert self.outsider is not None
                out = self.outsider.cancel({"vip_bundle_id": bundle_id, "reason": reason})
                return out["answer"]
            case "http":
                r = self.api.post(f"/vip-bundles/{bundle_id}/cancel", json={"reason": reason})
                assert r.status_code == 202, r.text
                return r.json()
            case "cli":
                out = vip_bundles("cancel", bundle_id, "--reason", reason)
                assert out.returncode == 0, out.stdout + out.stderr
                return json.loads(out.stdout)
        raise AssertionError(door)


@pytest.fixture
def doors(api: httpx.Client, interpreter: tests_outsider.Outsider) -> Doors:
    return Doors(api, interpreter)


def wait_started(bundle_id: str, status: Status, step: str, timeout: float = 30) -> None:
    """Until the step that runs in `status` has started (it is now at the partner, held)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bundle = store().get(bundle_id)
        if bundle is not None and bundle.status is status and bundle.starts.get(step, 0) > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"{step} of {bundle_id} never started: {store().get(bundle_id)}")


def assert_nothing_left(saga: Saga, bundle: Bundle, show_seats_before: int) -> None:
    """The partners' own books: nothing of the bundle is still booked or charged, each undo
    happened once, and the bundle knows every ticket the partners issued for it."""
    sim: SimulatorClient = saga.sim
    bid = bundle.vip_bundle_id
    assert bundle.status is Status.CANCELLED
    assert saga.events(bid)[-1] == "VipBundleCancelled_v1"
    assert bundle.history[-1].event == "VipBundleCancelled_v1"
    flights = sim.flight_tickets(reference_id=bid)
    assert [t for t in flights if not t["cancelled"]] == []
    assert sorted(t["ticket_id"] for t in flights) == sorted(bundle.flight_ticket_ids())
    issued = show_seats_before - sim.show_seats(bundle.show_id)
    assert issued == len(bundle.ticket_ids)  # booked once, and every ticket known
    refunds = Counter(r["payment_reference"] for r in sim.refunds())
    assert {t: refunds[t] for t in bundle.ticket_ids} == {t: 1 for t in bundle.ticket_ids}
    receipts = {r["ticket_id"]: r for r in sim.receipts()}
    assert all(receipts[t]["voided"] for t in bundle.ticket_ids)
    deletes = [c for c in saga.calls(bundle, FLIGHTS) if c["method"] == "DELETE"]
    assert all(c["status"] == 204 for c in deletes)  # each ticket cancelled once


DOORS = ["celery", "http", "cli"]


@pytest.mark.parametrize("door", DOORS)
def test_a_finalized_bundle_cancelled_through_each_door_is_undone(
    saga: Saga, doors: Doors, door: str
):
    body = request()
    seats = saga.sim.show_seats(body["show_id"])
    finalized = saga.run(body)
    assert finalized.status is Status.FINALIZED
    doors.prepare(door)
    answer = doors.cancel(door, finalized.vip_bundle_id, f"customer called ({door})")
    assert answer == {"vip_bundle_id": finalized.vip_bundle_id, "status": "cancelling"}
    bundle = saga.wait(finalized.vip_bundle_id)
    assert_nothing_left(saga, bundle, seats)
    assert len(bundle.flight_ticket_ids()) == 4 and len(bundle.refunded_ticket_ids) == 2
    assert bundle.cancellation is not None
    assert bundle.cancellation.reason == f"customer called ({door})"
    assert bundle.cancellation.from_status is Status.FINALIZED
    assert (bundle.cancellation.requested_by or "").startswith(door)  # http: with the key
    # Cancelling is idempotent: the same answer, nothing new happens.
    events = saga.events(bundle.vip_bundle_id)
    doors.prepare(door)
    again = doors.cancel(door, bundle.vip_bundle_id, "again")
    assert again == {"vip_bundle_id": bundle.vip_bundle_id, "status": "cancelled"}
    assert saga.events(bundle.vip_bundle_id) == events


@pytest.mark.parametrize("door", DOORS)
def test_a_bundle_in_flight_cancelled_through_each_door_leaks_nothing(
    saga: Saga, doors: Doors, door: str
):
    """The inbound flight is at the airline (held) when the cancel comes through the door."""
    status, step, path, method = HELD["inbound"]
    doors.prepare(door)
    body = request()
    seats = saga.sim.show_seats(body["show_id"])
    # The CLI starts slowly: hold the step longer than the worker's HTTP timeout, so its
    # tries time out while the airline books them anyway (the step ends in doubt).
    hold_ms, times = (2500, 4) if door == "cli" else (1500, 1)
    saga.sim.fault(path, status=None, delay_ms=hold_ms, times=times, methods=[method])
    bundle_id = saga.book(body)["vip_bundle_id"]
    wait_started(bundle_id, status, step)
    answer = doors.cancel(door, bundle_id, "plans changed")
    assert answer["status"] in ("cancelling", "cancelled")
    bundle = saga.wait(bundle_id, timeout=90)
    assert_nothing_left(saga, bundle, seats)
    assert bundle.cancellation is not None
    assert bundle.cancellation.from_status is Status.BOOKING_MADE
    # The return flight was never started.
    assert saga.sim.flight_tickets(reference_id=bundle_id, flight_id=body["return_flight_id"]) == []


@pytest.mark.parametrize("held", ["show", "inbound", "return"])
def test_a_cancel_racing_a_step_held_at_the_partner_undoes_what_it_booked(saga: Saga, held: str):
    status, step, path, method = HELD[held]
    body = request()
    seats = saga.sim.show_seats(body["show_id"])
    if held == "return":  # the inbound leg's call passes, the return leg's is held
        saga.sim.fault(path, status=None, times=1, methods=[method])
    saga.sim.fault(path, status=None, delay_ms=1500, times=1, methods=[method])
    bundle_id = saga.book(body)["vip_bundle_id"]
    wait_started(bundle_id, status, step)

    from tasks.cancel import cancel_bundle

    assert cancel_bundle(bundle_id, "race", who="test").status is Status.CANCELLING
    bundle = saga.wait(bundle_id)
    assert_nothing_left(saga, bundle, seats)
    # What the held step booked was recorded while cancelling (a late outcome), then undone.
    late = [h.event for h in bundle.history if h.from_status is Status.CANCELLING]
    assert ("BookingMade_v1" if held == "show" else "FlightBooked_v1") in late
    booked = 2 if held == "show" else 2 + 2 * ["inbound", "return"].index(held) + 2
    assert len(bundle.ticket_ids) + len(bundle.flight_ticket_ids()) == booked


def test_a_409_during_a_cancel_changes_nothing(saga: Saga):
    """The held inbound flight is refused (no seats left by the time the airline decides): the
    step booked nothing, the show tickets are refunded, the bundle still ends cancelled."""
    status, step, path, method = HELD["inbound"]
    body = request()
    seats = saga.sim.show_seats(body["show_id"])
    saga.sim.fault(path, status=None, delay_ms=1500, times=1, methods=[method])
    bundle_id = saga.book(body)["vip_bundle_id"]
    wait_started(bundle_id, status, step)
    saga.sim.set_flight_seats(body["inbound_flight_id"], 0)

    from tasks.cancel import cancel_bundle

    cancel_bundle(bundle_id, "409 race", who="test")
    bundle = saga.wait(bundle_id)
    assert_nothing_left(saga, bundle, seats)
    assert bundle.flight_ticket_ids() == []
    assert len(bundle.refunded_ticket_ids) == 2
    late = [h.event for h in bundle.history if h.from_status is Status.CANCELLING]
    assert "FlightBookingFailed_v1" in late
    assert bundle.booked_nothing == [Step.INBOUND]


def test_a_cancel_before_any_step_started_undoes_nothing(saga: Saga):
    body = request()
    saga.sim.fault(SHOWS, status=None, delay_ms=1500, times=1, methods=["POST"])
    bundle_id = saga.book(body)["vip_bundle_id"]
    # The show step may or may not have started: either way the bundle ends cancelled.
    from tasks.cancel import cancel_bundle

    cancel_bundle(bundle_id, "immediately", who="test")
    bundle = saga.wait(bundle_id)
    assert bundle.status is Status.CANCELLED
    assert [t for t in saga.sim.flight_tickets(reference_id=bundle_id) if not t["cancelled"]] == []


# --- the doors refuse what they must ------------------------------------------------------------


def test_http_cancel_answers_404_409_422_and_202_again(saga: Saga, api: httpx.Client):
    assert api.post("/vip-bundles/no-such-bundle/cancel", json={"reason": "x"}).status_code == 404
    body = request()
    saga.sim.set_show_seats(body["show_id"], 0)
    failed = saga.run(body)
    assert failed.status is Status.FAILED
    r = api.post(f"/vip-bundles/{failed.vip_bundle_id}/cancel", json={"reason": "x"})
    assert r.status_code == 409
    assert "already failed" in r.json()["errors"][0]["message"]
    bid = failed.vip_bundle_id
    for bad, field in [
        ({}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "x", "extra": 1}, "extra"),
        ([], "body"),
    ]:
        r = api.post(f"/vip-bundles/{bid}/cancel", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], r.json()
    json_type = {"Content-Type": "application/json"}
    assert (
        api.post(f"/vip-bundles/{bid}/cancel", content=b"{nope", headers=json_type).status_code
        == 422
    )


def test_celery_cancel_errors_name_the_problem(saga: Saga, interpreter: tests_outsider.Outsider):
    unknown = Outsider(interpreter).cancel({"vip_bundle_id": "no-such-bundle", "reason": "x"})
    assert "no-such-bundle" in unknown["message"]
    bad = Outsider(interpreter).cancel({"vip_bundle_id": "x", "reason": " ", "extra": 1})
    assert bad["error"] == "InvalidRequest"
    assert "reason" in bad["message"] and "extra" in bad["message"]
    body = request()
    saga.sim.set_show_seats(body["show_id"], 0)
    failed = saga.run(body)
    refused = Outsider(interpreter).cancel({"vip_bundle_id": failed.vip_bundle_id, "reason": "x"})
    assert "already failed" in refused["message"]


def test_cli_cancel_exits_1_for_unknown_or_failed_and_status_shows_the_reason(saga: Saga):
    out = vip_bundles("cancel", "no-such-bundle", "--reason", "x")
    assert out.returncode == 1 and "no-such-bundle" in out.stdout
    body = request()
    saga.sim.set_show_seats(body["show_id"], 0)
    failed = saga.run(body)
    out = vip_bundles("cancel", failed.vip_bundle_id, "--reason", "x")
    assert out.returncode == 1 and "already failed" in out.stdout
    assert vip_bundles("cancel", failed.vip_bundle_id, "--reason", " ").returncode == 2

    done = saga.run(request())
    assert vip_bundles("cancel", done.vip_bundle_id, "--reason", "rain").returncode == 0
    saga.wait(done.vip_bundle_id)
    out = vip_bundles("status", done.vip_bundle_id)
    assert "VipBundleCancelled_v1" in out.stdout and "rain" in out.stdout

"""As production runs it: RabbitMQ as broker with quorum queues (state still in Redis), a
booking worker and a compensation worker on separate queues, both `-P threads` as the README
recommends, and `celery beat` healing bundles whose message was lost.

Everything here goes through RabbitMQ, so the session's Redis-broker worker never sees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from process_manager.bundle import Status
from tests.helpers import Saga, request
from tests.needs import missing
from tests.rabbitmq import AMQP_URL, own_vhost
from vip_bundles import local_stack

BOOKING = ["vip-bundles", "vip-bundles.booking"]
COMPENSATION = ["vip-bundles.compensation"]


def rabbitmq_answers() -> bool:
    try:
        with Celery(broker=AMQP_URL).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module", autouse=True)
def rabbitmq() -> None:
    """Skipped without a RabbitMQ, failed in CI (tests/needs.py)."""
    if not rabbitmq_answers():
        missing(f"no RabbitMQ at {AMQP_URL}")


class Topology:
    def __init__(self, redis_url: str, broker_url: str, env: dict[str, str], logdir: Path) -> None:
        # What another service would build: only celery, our broker, our result backend, and
        # on quorum queues the queue type it declares (README, "RabbitMQ").
        self.app = Celery(broker=broker_url, backend=redis_url)
        self.app.conf.task_create_missing_queue_type = "quorum"
        self.env = env
        self.logdir = logdir
        # The README's pool: `-P threads` on both queues (its partner calls mostly wait).
        self.booking = local_stack.start_worker(
            env,
            "booking@localhost",
            8,
            pool="threads",
            queues=BOOKING,
            logdir=logdir,
            control_app=self.app,
        )
        self.compensation = local_stack.start_worker(
            env,
            "compensation@localhost",
            4,
            pool="threads",
            queues=COMPENSATION,
            logdir=logdir,
            control_app=self.app,
        )
        self.beat = local_stack.start_beat(env, logdir)

    def book(self, body: dict) -> str:
        result = self.app.send_task("vip_bundle.book", kwargs=body, queue="vip-bundles")
        return result.get(timeout=30)["vip_bundle_id"]

    def purge(self, queue: str) -> None:
        with self.app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)

    def pause(self, worker: local_stack.Worker, queue: str) -> None:
        self.app.control.cancel_consumer(queue, destination=[worker.name], reply=True)

    def resume(self, worker: local_stack.Worker, queue: str) -> None:
        self.app.control.add_consumer(queue, destination=[worker.name], reply=True)

    def stop(self) -> None:
        local_stack.stop_process(self.beat)
        self.booking.stop()
        self.compensation.stop()


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (no rabbitmqctl here: the default vhost)."""
    with own_vhost("vip-bundles-test") as url:
        yield url or AMQP_URL


@pytest.fixture(scope="module")
def topology(
    worker_env: dict[str, str], redis_url: str, logdir: Path, vhost: str
) -> Iterator[Topology]:
    env = {
        **worker_env,
        "BROKER_URL": vhost,
        "BROKER_QUEUE_TYPE": "quorum",  # RabbitMQ as in production: quorum queues
        "STALE_AFTER_S": "2",
        "RECONCILE_EVERY_S": "1",
    }
    t = Topology(redis_url, vhost, env, logdir)
    if vhost == AMQP_URL:
        for queue in (*BOOKING, *COMPENSATION):
            t.purge(queue)  # a shared vhost: leftovers of an earlier run name unknown bundles
    yield t
    t.stop()


def ran(worker: local_stack.Worker, task: str, bundle_id: str) -> bool:
    return any(task in line and bundle_id in line for line in worker.logfile.open())


def test_happy_path_on_rabbitmq(topology: Topology, saga: Saga):
    bundle_id = topology.book(request())
    assert saga.wait(bundle_id).status is Status.FINALIZED
    assert ran(topology.booking, "vip_bundle.book_flight", bundle_id)


def test_rollback_on_rabbitmq_runs_undo_steps_on_the_compensation_worker(
    topology: Topology, saga: Saga
):
    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    bundle_id = topology.book(body)
    bundle = saga.wait(bundle_id)
    assert bundle.status is Status.FAILED
    assert sorted(bundle.refunded_ticket_ids) == sorted(bundle.ticket_ids)
    comp, book = topology.compensation, topology.booking
    assert ran(comp, "vip_bundle.compensation.refund_ticket", bundle_id)
    assert ran(comp, "vip_bundle.compensation.cancel_flight_tickets", bundle_id)
    assert not ran(book, "vip_bundle.compensation.refund_ticket", bundle_id)
    assert not ran(comp, "vip_bundle.book_flight", bundle_id)


def test_beat_resumes_a_bundle_whose_step_message_was_lost(topology: Topology, saga: Saga):
    body = request()
    saga.sim.fault("/dead-nation-api", status=None, delay_ms=1500, times=1)
    bundle_id = topology.book(body)
    time.sleep(0.5)  # the show step is running (slowed by the simulator) ...
    topology.pause(topology.booking, "vip-bundles.booking")
    # ... so the next step's message is sent to a queue nobody reads. Lose it.
    saga.wait(bundle_id, until={Status.BOOKING_MADE})
    time.sleep(0.3)
    topology.purge("vip-bundles.booking")
    topology.resume(topology.booking, "vip-bundles.booking")

    bundle = saga.wait(bundle_id, timeout=60)
    assert bundle.status is Status.FINALIZED
    assert len(saga.sim.flight_tickets(reference_id=bundle_id)) == 4


def test_beat_finishes_a_rollback_whose_compensations_were_lost(topology: Topology, saga: Saga):
    body = request()
    saga.sim.set_flight_seats(body["return_flight_id"], 0)
    topology.pause(topology.compensation, "vip-bundles.compensation")
    bundle_id = topology.book(body)
    saga.wait(bundle_id, until={Status.ROLLING_BACK})
    time.sleep(0.3)
    topology.purge("vip-bundles.compensation")  # the process manager's message is gone
    topology.resume(topology.compensation, "vip-bundles.compensation")

    bundle = saga.wait(bundle_id, timeout=60)
    assert bundle.status is Status.FAILED
    tickets = saga.sim.flight_tickets(reference_id=bundle_id)
    assert tickets and all(t["cancelled"] for t in tickets)
    assert len(saga.calls(bundle, "/payments-api/refunds")) == len(bundle.ticket_ids)


def test_the_queues_are_quorum_queues(topology: Topology):
    """The workers declared quorum queues: declaring one as quorum again is equivalent,
    declaring it classic is refused by RabbitMQ (406 PRECONDITION_FAILED)."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Exchange, Queue

    def declare(name: str, queue_type: str) -> None:
        with topology.app.connection_for_write() as conn:
            Queue(
                name,
                Exchange("vip-bundles", type="direct"),
                routing_key=name,
                queue_arguments={"x-queue-type": queue_type},
            )(conn.channel()).declare()

    for name in (*BOOKING, *COMPENSATION):
        declare(name, "quorum")
        with pytest.raises(PreconditionFailed):
            declare(name, "classic")

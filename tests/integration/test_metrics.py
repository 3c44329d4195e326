"""The metrics adapter against a real Redis and the real partner simulator: processes add up,
a forked child never re-sends its parent's counts, partner outcomes are classified."""

from __future__ import annotations

import os
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters import metrics
from adapters.metrics import Meter, RedisCollector
from adapters.partners import Partners, PartnerUnavailable, ShowSoldOut
from adapters.store import BundleStore
from partner_simulator.server import SimulatorClient
from process_manager import saga, transition
from process_manager.bundle import Status
from tests.factories import fresh_bundle


def meter_for(store: BundleStore) -> Meter:
    meter = Meter(flush_every_s=3600)  # flushed by hand here
    meter.configure(lambda: (store.redis, store.prefix))
    return meter


def scrape(store: BundleStore) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as the Prometheus parser reads it: sample name -> labels -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(store))
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_processes_add_up_and_the_histogram_is_cumulative(store: BundleStore):
    one, two = meter_for(store), meter_for(store)  # two worker processes, maybe two hosts
    one.step("book_show_tickets", 0.02)
    one.step("book_show_tickets", 0.3)
    two.step("book_show_tickets", 120.0)
    one.partner_call("shows", "ok")
    two.partner_call("shows", "ok")
    two.partner_call("flights", "transient")

    assert store.redis.exists(metrics.metrics_key(store.prefix)) == 0  # nothing sent yet
    one.flush()
    two.flush()
    assert one.flush() == 0  # nothing left to send

    m = scrape(store)
    calls = m["vip_bundles_partner_calls_total"]
    assert calls[(("outcome", "ok"), ("partner", "shows"))] == 2
    assert calls[(("outcome", "transient"), ("partner", "flights"))] == 1
    assert calls[(("outcome", "gave_up"), ("partner", "payments"))] == 0  # present, zero
    buckets = {
        dict(k)["le"]: v
        for k, v in m["vip_bundles_step_duration_seconds_bucket"].items()
        if dict(k)["step"] == "book_show_tickets"
    }
    assert buckets["0.01"] == 0 and buckets["0.025"] == 1 and buckets["0.5"] == 2
    assert buckets["60.0"] == 2 and buckets["+Inf"] == 3
    step = (("step", "book_show_tickets"),)
    assert m["vip_bundles_step_duration_seconds_count"][step] == 3
    assert m["vip_bundles_step_duration_seconds_sum"][step] == pytest.approx(120.32)


def test_every_status_is_a_gauge_and_transitions_are_counted(store: BundleStore):
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    event = saga.booking_failed(bundle, "sold out")
    store.save(bundle, transition.apply(bundle, event), event)

    m = scrape(store)
    bundles = {dict(k)["status"]: v for k, v in m["vip_bundles_bundles"].items()}
    assert bundles == {s.value: (1 if s is Status.ROLLING_BACK else 0) for s in Status}
    transitions = {dict(k)["event"]: v for k, v in m["vip_bundles_transitions_total"].items()}
    assert transitions["VipBundleInitialized_v1"] == 1
    assert transitions["BookingFailed_v1"] == 1
    assert transitions["VipBundleFailed_v1"] == 0
    assert m["vip_bundles_oldest_in_flight_seconds"][()] >= 0
    kinds = {dict(k)["kind"] for k in m["vip_bundles_compensations_total"]}
    assert kinds == {"refund_ticket", "cancel_flight_tickets"}


def test_a_forked_child_does_not_send_its_parents_counts_again(store: BundleStore):
    meter = meter_for(store)
    meter.partner_call("shows", "ok")  # pending in the parent when the worker forks
    pid = os.fork()
    if pid == 0:  # the child: a prefork pool process
        try:
            meter.partner_call("shows", "ok")
            meter.flush()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    meter.flush()

    calls = scrape(store)["vip_bundles_partner_calls_total"]
    assert calls[(("outcome", "ok"), ("partner", "shows"))] == 2


def test_partner_outcomes_are_classified_in_the_one_send(
    store: BundleStore, simulator, sim: SimulatorClient
):
    meter = meter_for(store)  # its own: nothing else this process counts mixes in
    partners = Partners(simulator.url, timeout_s=2, attempts=3, max_wait_s=0.01, meter=meter)
    try:
        bundle = fresh_bundle()
        sim.fault("/dead-nation-api", status=503, times=2)  # two failed tries, then ok
        partners.book_show_tickets(
            booking_id=bundle.booking_id,
            customer_address=bundle.customer_email,
            event_id=bundle.show_id,
            number_of_tickets=1,
        )
        sim.set_show_seats(bundle.show_id, 0)
        with pytest.raises(ShowSoldOut):
            partners.book_show_tickets(
                booking_id=str(uuid.uuid4()),
                customer_address=bundle.customer_email,
                event_id=bundle.show_id,
                number_of_tickets=1,
            )
        sim.fault("/payments-api", status=503, times=3)
        with pytest.raises(PartnerUnavailable):
            partners.refund(payment_reference="t", reason="r", deduplication_id="d")
        meter.flush()
    finally:
        partners.close()

    calls = {
        (dict(k)["partner"], dict(k)["outcome"]): v
        for k, v in scrape(store)["vip_bundles_partner_calls_total"].items()
        if v
    }
    assert calls == {
        ("shows", "transient"): 2,
        ("shows", "ok"): 1,
        ("shows", "refused"): 1,
        ("payments", "transient"): 3,
        ("payments", "gave_up"): 1,
    }


def test_metrics_serve_redis_memory_and_what_settled_bundles_hold(redis_url: str):
    from prometheus_client import CollectorRegistry, generate_latest
    from redis import Redis

    from adapters.metrics_memory import MemoryCollector
    from adapters.store import BundleStore

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MemoryCollector(BundleStore(Redis.from_url(redis_url)), archiving=True))
    lines = generate_latest(registry).decode().splitlines()
    values = {line.split()[0]: float(line.split()[1]) for line in lines if line[0] != "#"}
    assert values["vip_bundles_redis_used_memory_bytes"] > 0
    assert "vip_bundles_redis_maxmemory_bytes" in values
    assert values["vip_bundles_settled_memory_bytes"] >= 0
    assert values["vip_bundles_archiving"] == 1

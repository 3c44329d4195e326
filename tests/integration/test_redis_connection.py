"""The Redis connection of every process (adapters/redis_connection.py) on a real Sentinel stack:
a call in flight when the master dies ends on the promoted replica, and a write is confirmed
only once a replica has it (Redis WAIT)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from unittest.mock import patch

import pytest

from adapters.redis_connection import NotReplicated
from adapters.settings import Settings
from adapters.store import BundleStore
from process_manager import saga, transition
from tests.factories import fresh_bundle
from tests.needs import missing
from tests.reliability.sentinel_stack import SentinelStack
from vip_bundles import local_stack


@pytest.fixture
def ha() -> Iterator[SentinelStack]:
    if not shutil.which("redis-server"):
        missing("redis-server is not installed")
    stack = SentinelStack()
    yield stack
    stack.close()


def test_a_call_in_flight_when_the_master_dies_ends_on_the_promoted_replica(ha: SentinelStack):
    client = ha.client()
    client.set("before", "1")
    client.wait(1, 1000)
    answers: list[object] = []
    # Blocked in the master when it is killed: the call is retried on the new master.
    reader = threading.Thread(
        target=lambda: answers.append(client.blpop(["list-filled-later"], timeout=30))
    )
    reader.start()
    time.sleep(0.5)
    old = ha.kill_master()
    new = ha.wait_promoted(old.port)
    ha.node(new).client().rpush("list-filled-later", "after the failover")
    reader.join(timeout=30)

    assert answers == [(b"list-filled-later", b"after the failover")]
    assert client.get("before") == b"1"  # acknowledged by the replica before the kill


def test_a_transition_retried_after_its_reply_was_lost_is_recognised_as_its_own(
    ha: SentinelStack,
):
    """The version-checked script applied on the first try: the retry is not a lost race."""
    store = BundleStore(ha.client())
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    event = saga.booking_made(bundle, ["t1"])
    new = transition.apply(bundle, event)
    assert store.save(bundle, new, event)
    assert store.save(bundle, new, event)  # as a retry would: the same write, found done
    other = transition.apply(bundle, saga.booking_made(bundle, ["t2"]))
    assert not store.save(bundle, other, event)  # another writer's change is a lost race


def test_a_write_is_confirmed_once_the_replica_has_it_and_refused_when_it_does_not_answer(
    ha: SentinelStack,
):
    store = BundleStore(ha.client())
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    store.confirm_replicated(bundle.vip_bundle_id, 1, timeout_s=5)
    replica = next(n for n in ha.data if n.port != ha.master_port())
    assert replica.client().hget(f"vip-bundles:bundle:{bundle.vip_bundle_id}", "version") == b"1"

    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # connected, acknowledging nothing
    try:
        with pytest.raises(NotReplicated, match="no replica acknowledged"):
            store.confirm_replicated(bundle.vip_bundle_id, 1, timeout_s=0.3)
        with pytest.raises(NotReplicated, match="not on the master"):
            store.confirm_replicated(bundle.vip_bundle_id, 2, timeout_s=0.3)
    finally:
        replica.process.send_signal(signal.SIGCONT)
    store.confirm_replicated(bundle.vip_bundle_id, 1, timeout_s=5)


def test_a_master_without_a_replica_confirms_at_once(store: BundleStore):
    """The test Redis has no replica: nothing to wait for (the contract: "when it has one"; a
    WAIT would time out with no acknowledgement and refuse)."""
    fresh = fresh_bundle()
    bundle, _ = store.create(fresh, saga.initialized(fresh))
    store.confirm_replicated(bundle.vip_bundle_id, 1, timeout_s=0.2)


def test_sentinel_settings_are_checked_at_start():
    with pytest.raises(ValueError, match="REDIS_SENTINEL_MASTER"):
        Settings(redis_sentinels="127.0.0.1:26379")
    with pytest.raises(ValueError, match="REDIS_SENTINELS: 'nohost' is not host:port"):
        Settings(redis_sentinels="nohost", redis_sentinel_master="m")


def test_passwords_come_from_redis_url_and_redis_sentinel_password():
    """The servers ask for a password (from REDIS_URL, quoted there) and so do the sentinels
    (REDIS_SENTINEL_PASSWORD): the store's client and Celery's broker and backend get in."""
    if not shutil.which("redis-server"):
        missing("redis-server is not installed")
    stack = SentinelStack(password="p@ss:w/rd%", sentinel_password="sentinel-secret")
    try:
        client = stack.client()
        client.set("k", "v")
        assert client.get("k") == b"v"
        app = stack.celery_app()
        app.backend.set("result-key", "42")
        assert app.backend.get("result-key") == b"42"
        with app.connection_for_write() as conn:
            queue = conn.SimpleQueue("vip-bundles-password-check")
            queue.put({"hello": "sentinel"})
            assert queue.get(timeout=10).payload == {"hello": "sentinel"}
            queue.close()
    finally:
        stack.close()


def test_celery_gets_the_sentinels_in_its_own_form_with_the_database_on_every_address():
    """celeryconfig, as a worker loads it with REDIS_SENTINELS set (read once per process)."""
    env = local_stack.celery_env(
        REDIS_URL="redis://:pw@ignored-host:6379/3",
        REDIS_SENTINELS="10.0.0.1:26379,10.0.0.2:26380",
        REDIS_SENTINEL_MASTER="vip-bundles",
        REDIS_SENTINEL_PASSWORD="s3cret",
    )
    env.pop("BROKER_URL", None)
    env.pop("RESULT_BACKEND", None)
    code = (
        "import json, celeryconfig as c; print(json.dumps([c.broker_url, c.result_backend, "
        "c.broker_transport, c.broker_transport_options, c.result_backend_transport_options]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    broker, backend, transport, broker_options, backend_options = json.loads(done.stdout)

    assert broker == backend == "sentinel://:pw@10.0.0.1:26379/3;sentinel://:pw@10.0.0.2:26380/3"
    assert transport == "adapters.broker:SentinelTransport"
    for options in (broker_options, backend_options):
        assert options["master_name"] == "vip-bundles"
        assert options["sentinel_kwargs"] == {"password": "s3cret"}


def test_a_creation_seen_without_replicas_is_confirmed_without_another_round_trip(
    store: BundleStore,
):
    # The creating script saw no replica (this Redis has none): the check asks nothing more.
    fresh = fresh_bundle()
    store.create(fresh, saga.initialized(fresh))
    with patch.object(store.redis, "pipeline", side_effect=AssertionError("a round trip")):
        store.confirm_replicated(fresh.vip_bundle_id, 1, timeout_s=0.2)
    # Another bundle (or a later version) is still checked.
    with pytest.raises(NotReplicated):
        store.confirm_replicated(fresh.vip_bundle_id, 2, timeout_s=0.2)

"""Scenario 9: archiving settled bundles (retention) survives crashes and outages.

Each scenario books a mix of bundles (a third roll back), lets them settle, then moves the clock
of the archiving process a week and a day on (CLOCK_OFFSET_S) and runs `vip-bundles archive run
--batch 5` as an operator (or beat's task) would, into a PostgreSQL database of the scenario's
own. Faults:
- the archiving process is killed (`kill -9`) before its first commit (the archive's table
  locked by the test), and again after a commit, before the removal from Redis (Redis writes
  paused by the test): each bundle is in Redis, in the archive, or in both; never in neither;
- PostgreSQL is unreachable from the start, then the archiver's connection is cut mid-write
  (`pg_terminate_backend`): nothing leaves Redis;
- the Redis server is killed (`kill -9`) while the removal is under way (after the commit),
  and started again from its append-only file.
Then a second pass finishes: every bundle archived once, none left in Redis, the invariants hold
over Redis and the archive together, and `vip-bundles audit` (which covers archived bundles) is
clean.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.archive import BundleArchive
from tests import archive_db
from tests.needs import missing
from tests.reliability.stack import Stack
from tests.reliability.test_broker_restart import OwnRedis
from vip_bundles import local_stack

pytestmark = pytest.mark.slow

BUNDLES = 24
LATER = str(8 * 86_400)  # the archiving process's clock: a week and a day on


@pytest.fixture
def archive_url() -> Iterator[str]:
    url = archive_db.claim(0)
    if url is None:
        missing("no PostgreSQL at 127.0.0.1:5432")
    yield url
    archive_db.drop(url)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    yield server
    server.stop()


def settled_stack(make: Callable[..., Stack], name: str, archive: str, **kw: str) -> Stack:
    st = make(name, ARCHIVE_URL=archive, **kw)
    st.archive = BundleArchive(archive)
    st.start_worker("worker", concurrency=4)
    st.book_mix(BUNDLES)
    st.wait(timeout=120)
    return st


def archiver(st: Stack, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vip_bundles", "archive", "run", "--batch", "5"],
        env=st.env(CLOCK_OFFSET_S=LATER, **env),
        cwd=local_stack.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(st: Stack) -> str:
    p = archiver(st)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return out.strip()


def where(st: Stack) -> dict[str, int]:
    """How many bundles are only in Redis, only in the archive, in both, in neither."""
    assert st.archive is not None
    archived = {b.vip_bundle_id for b in st.archive.many(st.submitted)}
    live = {i for i in st.submitted if st.store.get(i) is not None}
    everything = set(st.submitted)
    return {
        "redis": len(live - archived),
        "archive": len(archived - live),
        "both": len(live & archived),
        "neither": len(everything - live - archived),
    }


def rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT count(*) FROM bundles").fetchone()[0])


def until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def waiting_on_lock(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]
        )


def kill(p: subprocess.Popen[str]) -> int:
    p.kill()
    p.wait(timeout=30)
    return p.returncode


def test_archiver_killed_mid_batch_loses_nothing(make_stack, record, archive_url):
    st = settled_stack(make_stack, "archive-killed", archive_url)
    # Killed before its first commit: the test holds the archive's table.
    with psycopg.connect(archive_url) as lock:
        lock.execute("LOCK TABLE bundles IN EXCLUSIVE MODE")
        p = archiver(st)
        until(lambda: waiting_on_lock(archive_url) > 0)
        kill(p)
        lock.rollback()
    before_commit = where(st)
    assert before_commit["redis"] == BUNDLES and rows(archive_url) == 0

    # Killed after a commit, before its removal from Redis: the test pauses Redis writes.
    st.redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        p = archiver(st)
        until(lambda: rows(archive_url) >= 5)
        time.sleep(0.5)
        kill(p)
    finally:
        st.redis.execute_command("CLIENT", "UNPAUSE")
    after_commit = where(st)
    assert after_commit["neither"] == 0 and after_commit["both"] >= 5

    second = finish(st)
    healed = where(st)
    report = st.check()
    record(
        "11-archive-kill",
        "Archiving process killed mid-batch",
        report,
        faults=[
            f"{BUNDLES} settled bundles (a third rolled back), archived in batches of 5",
            "`kill -9` of `vip-bundles archive run` while its first INSERT waits on a lock "
            "the test holds on the archive's table (before any commit)",
            "`kill -9` again after a batch was committed, while the removal from Redis waits "
            "(Redis writes paused by the test)",
            "then one more `vip-bundles archive run`",
        ],
        killed_before_commit=before_commit,
        killed_after_commit=after_commit,
        second_pass=second,
        after_second_pass=healed,
    )
    assert healed == {"redis": 0, "archive": BUNDLES, "both": 0, "neither": 0}
    assert report.violations == [], str(report)


def test_postgresql_down_while_archiving_removes_nothing(make_stack, record, archive_url):
    st = settled_stack(make_stack, "archive-pg-down", archive_url)
    nowhere = f"postgresql://postgres@127.0.0.1:{local_stack.free_port()}/vip_bundles"
    p = archiver(st, ARCHIVE_URL=nowhere)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "nothing was removed" in err
    unreachable = where(st)
    assert unreachable["redis"] == BUNDLES

    # Down mid-write: the archiver's connection is terminated while its INSERT waits.
    with psycopg.connect(archive_url) as lock:
        lock.execute("LOCK TABLE bundles IN EXCLUSIVE MODE")
        p = archiver(st)
        until(lambda: waiting_on_lock(archive_url) > 0)
        with psycopg.connect(archive_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        _, err = p.communicate(timeout=60)
        lock.rollback()
    assert p.returncode == 2, err
    cut = where(st)
    assert cut["redis"] == BUNDLES and rows(archive_url) == 0
    assert not st.store.tombstone(st.submitted[0])

    second = finish(st)
    healed = where(st)
    report = st.check()
    record(
        "11-archive-pg-down",
        "PostgreSQL down while archiving",
        report,
        faults=[
            f"{BUNDLES} settled bundles, archived in batches of 5",
            "ARCHIVE_URL pointing at a port nothing listens on: `archive run` exits 2",
            "the archiver's connection terminated (`pg_terminate_backend`) while its INSERT "
            "waits: exits 2",
            "then `vip-bundles archive run` with PostgreSQL back",
        ],
        unreachable=unreachable,
        connection_cut=cut,
        second_pass=second,
        after_second_pass=healed,
    )
    assert healed == {"redis": 0, "archive": BUNDLES, "both": 0, "neither": 0}
    assert report.violations == [], str(report)


def test_redis_killed_mid_removal_loses_nothing(make_stack, record, archive_url, own_redis):
    st = settled_stack(make_stack, "archive-redis-killed", archive_url, url=own_redis.url)
    st.redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    p = archiver(st)
    until(lambda: rows(archive_url) >= 5)
    time.sleep(0.5)
    own_redis.restart(1, crash=True)  # kill -9 while the removal waits, then start again
    p.wait(timeout=60)
    assert p.returncode != 0  # it lost Redis mid-pass
    after_crash = where(st)
    assert after_crash["neither"] == 0

    second = finish(st)
    healed = where(st)
    report = st.check()
    record(
        "11-archive-redis-kill",
        "Redis killed mid-removal",
        report,
        faults=[
            f"{BUNDLES} settled bundles, archived in batches of 5, on a test-owned redis-server "
            "(appendonly yes)",
            "after the first batch was committed, while its removal waits (writes paused), "
            "redis-server is killed (`kill -9`) and started again from its append-only file",
            "then one more `vip-bundles archive run`",
        ],
        after_crash=after_crash,
        archiver_exit=p.returncode,
        second_pass=second,
        after_second_pass=healed,
    )
    assert healed == {"redis": 0, "archive": BUNDLES, "both": 0, "neither": 0}
    assert report.violations == [], str(report)

"""Redis Sentinel over TLS, sentinels and data nodes alike, through a failover (slow).

The sentinel stack of tests/reliability/sentinel_stack.py with every node TLS only (its
certificate from a CA made here, replication and the sentinels' links over TLS): REDIS_URL is
`rediss://...?ssl_cert_reqs=required&ssl_ca_certs=...`, and the sentinels are reached over TLS
with the same CA. A worker, beat and the CLI book before and after SENTINEL FAILOVER, with
no restart.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import book_args, cli_in, request
from tests.needs import missing
from tests.reliability.sentinel_stack import SentinelStack
from tests.tls import CA
from tests.tls_redis import redis_tls_missing
from vip_bundles import local_stack

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SentinelStack]:
    reason = redis_tls_missing()
    if reason:
        missing(reason)
    stack = SentinelStack(tls=CA(tmp_path / "ca", "sentinel CA"))
    try:
        yield stack
    finally:
        stack.close()


def test_the_saga_over_tls_sentinels_follows_a_failover(
    stack: SentinelStack, simulator, tmp_path: Path
):
    env = local_stack.celery_env(**stack.env(), GATEWAY_URL=simulator.url, RECONCILE_EVERY_S="1")
    env.pop("ARCHIVE_URL", None)
    assert env["REDIS_URL"].startswith("rediss://")
    app = stack.celery_app()
    worker = local_stack.start_worker(
        env, pool="threads", concurrency=4, logdir=tmp_path, control_app=app
    )
    beat = local_stack.start_beat(env, tmp_path)
    try:
        before = cli(env, *book_args(request()), "--wait")
        assert before.returncode == 0 and ": finalized" in before.stdout, before.stderr
        old, new = stack.failover()
        assert old != new
        after = cli(env, *book_args(request()), "--wait")
        assert after.returncode == 0 and ": finalized" in after.stdout, after.stderr
        bundle_id = re.search(r"([0-9a-f-]{36}): finalized", before.stdout).group(1)  # type: ignore[union-attr]
        assert cli(env, "status", bundle_id).returncode == 0  # on the new master
        # The test's client follows too (TLS to the sentinels, then to the master).
        assert stack.client().ping()
    finally:
        local_stack.stop_process(beat)
        worker.stop()
        app.close()
    assert "Traceback" not in worker.logfile.read_text()


def test_a_wrong_ca_for_the_sentinels_stops_at_start_in_one_line(
    stack: SentinelStack, simulator, tmp_path: Path
):
    other = CA(tmp_path / "other", "other CA")
    env = local_stack.celery_env(**stack.env(), GATEWAY_URL=simulator.url)
    env["REDIS_URL"] = env["REDIS_URL"].replace(str(stack.ca.cert), str(other.cert))  # type: ignore[union-attr]
    env.pop("ARCHIVE_URL", None)
    out = cli(env, "stats")
    assert out.returncode == 1
    line = out.stderr.strip()
    assert re.fullmatch(
        r"vip-bundles: Redis Sentinel 127\.0\.0\.1:\d+ \(REDIS_SENTINELS\): TLS: the server's "
        r"certificate is not trusted \(self-signed certificate in certificate chain\)",
        line,
    ), line


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli_in(env, *args, timeout=180)

"""A bad setting stops every process at start, in one line that names it and never its value:
a worker (and anything else that loads celeryconfig: beat, Flower) and the CLI's commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vip_bundles import local_stack

BAD = [
    ("PARTNER_RATE_LIMITS", "flights=10", "unknown partner 'flights'"),
    ("PARTNER_RATE_LIMITS", "transportation-api", "is not <prefix>=<calls per second>"),
    ("PARTNER_RATE_LIMITS", "payments-api=0", "calls per second must be > 0"),
    ("BOOKING_DEADLINE_S", "-1", "BOOKING_DEADLINE_S: Input should be greater than 0"),
]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=local_stack.ROOT,
        env=local_stack.celery_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("name", "value", "said"), BAD)
def test_a_worker_refuses_to_start_naming_the_setting(name: str, value: str, said: str):
    done = run(["celery", "-A", "tasks", "worker", "-P", "solo"], **{name: value})
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("vip-bundles: bad setting: ")
    assert name in lines[0] and said in lines[0]


def test_the_cli_refuses_to_run_naming_every_bad_setting_and_no_secret():
    secret = "not-a-url-but-a-secret-0123456789"
    done = run(
        ["vip_bundles", "stats"],
        PARTNER_RATE_LIMITS="flights=10",
        HTTP_TIMEOUT_S="soon",
        REPLICA_ACK_TIMEOUT_S=secret,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "PARTNER_RATE_LIMITS" in line and "HTTP_TIMEOUT_S" in line
    assert "REPLICA_ACK_TIMEOUT_S" in line and secret not in line

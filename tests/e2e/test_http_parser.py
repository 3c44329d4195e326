"""The HTTP parser is never loosened (intake-api.md, "Limits"): what it refuses gets the
server's own 400 and books nothing. Raw bytes over a socket against `vip-bundles api` started
as a user starts it (default settings: loopback, no keys), since a client library would not
send these requests at all.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.celery_app import store
from tests.e2e.api_server import Door, RawAnswer, raw_request, start_door
from tests.helpers import request
from vip_bundles import local_stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def door(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    d = start_door(logdir, {})
    yield d
    d.stop()


def booking(bundle_id: str) -> bytes:
    return json.dumps(request(vip_bundle_id=bundle_id)).encode()


def post(door: Door, body: bytes, *headers: bytes, framing: bytes | None = None) -> bytes:
    """A POST /book-vip-bundle as raw bytes: `headers` as written, then the body."""
    if framing is None:
        framing = b"Content-Length: " + str(len(body)).encode()
    lines = [
        b"POST /book-vip-bundle HTTP/1.1",
        b"Host: 127.0.0.1:" + str(door.port).encode(),
        b"Content-Type: application/json",
        framing,
        *headers,
        b"Connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def the_servers_own_400(answer: RawAnswer) -> None:
    """uvicorn's answer to what its parser refuses: a plain 400, not one of the app's."""
    assert answer.status == 400, answer
    assert not answer.headers.get("content-type", "").startswith("application/json"), answer
    assert b'"errors"' not in answer.body


def test_a_well_formed_raw_request_books(door: Door):
    bundle_id = str(uuid.uuid4())
    answer = raw_request(door.port, post(door, booking(bundle_id), b"Correlation-ID: order-1"))
    assert answer.status == 201, answer
    assert store().get(bundle_id) is not None


@pytest.mark.parametrize(
    "value", [b"order\x0142", b"order\x1b[31m", b"order\x7f42", b"order\x0042"]
)
def test_control_characters_in_correlation_id_are_the_parsers_400(door: Door, value: bytes):
    bundle_id = str(uuid.uuid4())
    answer = raw_request(door.port, post(door, booking(bundle_id), b"Correlation-ID: " + value))
    the_servers_own_400(answer)
    assert store().get(bundle_id) is None


def test_control_characters_in_any_header_are_the_parsers_400(door: Door):
    bundle_id = str(uuid.uuid4())
    answer = raw_request(door.port, post(door, booking(bundle_id), b"X-Note: a\x01b"))
    the_servers_own_400(answer)
    assert store().get(bundle_id) is None


def test_non_ascii_correlation_id_reaches_the_app_and_is_422_naming_it(door: Door):
    bundle_id = str(uuid.uuid4())
    answer = raw_request(door.port, post(door, booking(bundle_id), b"Correlation-ID: caf\xe9"))
    assert answer.status == 422, answer
    assert json.loads(answer.body)["errors"][0]["field"] == "Correlation-ID"
    assert store().get(bundle_id) is None


def test_content_length_with_transfer_encoding_is_the_parsers_400(door: Door):
    """The classic smuggling shape: a proxy that reads Content-Length and a server that reads
    the chunks disagree about where the second request starts. Refused whole."""
    smuggled = str(uuid.uuid4())
    inner = post(door, booking(smuggled))
    body = b"0\r\n\r\n" + inner
    framing = b"Content-Length: " + str(len(body)).encode() + b"\r\nTransfer-Encoding: chunked"
    answer = raw_request(door.port, post(door, body, framing=framing))
    the_servers_own_400(answer)
    assert store().get(smuggled) is None


def test_two_content_lengths_are_the_parsers_400(door: Door):
    bundle_id = str(uuid.uuid4())
    body = booking(bundle_id)
    framing = b"Content-Length: %d\r\nContent-Length: %d" % (len(body), len(body) - 1)
    the_servers_own_400(raw_request(door.port, post(door, body, framing=framing)))
    assert store().get(bundle_id) is None


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}}}}\r\n0\r\n\r\n", b"-1\r\n{}\r\n0\r\n\r\n"],
    ids=["size not hex", "chunk longer than its size", "negative size"],
)
def test_bad_chunked_framing_is_the_parsers_400(door: Door, chunks: bytes):
    bundle_id = str(uuid.uuid4())
    raw = post(door, booking(bundle_id), framing=b"Transfer-Encoding: chunked")
    raw = raw.rpartition(b"\r\n\r\n")[0] + b"\r\n\r\n" + chunks  # the body replaced by `chunks`
    the_servers_own_400(raw_request(door.port, raw))
    assert store().get(bundle_id) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /health HTTP/1.1\nHost: 127.0.0.1\n\n",  # bare LF line ends
        b"GET /health HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n",  # space before the colon
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n folded: header\r\n\r\n",  # obs-fold
    ],
    ids=["bare LF", "space before colon", "obs-fold"],
)
def test_malformed_request_heads_are_the_parsers_400(door: Door, raw: bytes):
    the_servers_own_400(raw_request(door.port, raw))


def test_nothing_in_the_code_loosens_the_parser():
    tracked = subprocess.run(
        [
            "git",
            "grep",
            "-l",
            "-e",
            "set_dangerous" + "_leniencies",  # split: this file is not the code it searches
            "-e",
            'forwarded_allow_ips="\\*"',
            "--",
            "*.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    offenders = [p for p in tracked.stdout.split() if p != "tests/e2e/test_http_parser.py"]
    assert offenders == []

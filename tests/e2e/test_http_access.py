"""The HTTP door's access rules and limits (intake-api.md, "Limits" and "Access"), as a stranger
meets them: `vip-bundles api` started as a user starts it, in its own process, with API_KEYS in
its environment, and plain HTTP requests against it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.api_server import Door, start_door
from tests.helpers import request
from vip_bundles import local_stack
from vip_bundles.api import create_app
from vip_bundles.guard import DoorGuard
from vip_bundles.guard.keys import parse_api_keys

# Keys as an operator makes them (at least 32 characters: shorter ones are refused at start).
KEYS = {
    "shop": "k-shop-7f3a9c0e5d2b4a6f8e1c3d5b7a9f0e2d",
    "ops": "k-ops-2b8e1d4c6a0f9e3b5d7c1a2e4f6b8d0c",
    "booker": "k-booker-5c6d0e8f1a3b2c4d6e8f0a1b3c5d7e9f",
}
JSON = {"Content-Type": "application/json"}
API_KEYS = f"{KEYS['shop']}:book+read,{KEYS['ops']}:read+operate,{KEYS['booker']}:book"


@pytest.fixture(scope="module")
def door(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    d = start_door(logdir, {"API_KEYS": API_KEYS})
    yield d
    d.stop()


def only_error(response: httpx.Response) -> dict[str, str]:
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    return errors[0]


# --- access ---------------------------------------------------------------------------------------


def test_health_is_open_and_everything_else_needs_a_key(door: Door):
    with door.client() as anonymous:
        assert anonymous.get("/health").status_code == 200
        for method, path in [
            ("GET", "/vip-bundles?status=failed"),
            ("GET", "/vip-bundles/0b5f2b1e-8c1d-4f7a-9a53-3f0a6c1f2e10"),
            ("POST", "/book-vip-bundle"),
            ("GET", "/openapi.json"),
            ("GET", "/no-such-page"),
        ]:
            r = anonymous.request(method, path)
            assert r.status_code == 401, (method, path, r.text)
            assert "Bearer" in r.headers["WWW-Authenticate"]
            assert "Basic" in r.headers["WWW-Authenticate"]
            assert only_error(r)["field"] == "Authorization"


def test_an_unknown_key_is_401(door: Door):
    with door.client("k-nobody-" + "0" * 32) as stranger:
        r = stranger.get("/vip-bundles?status=failed")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_each_route_needs_its_scope(door: Door):
    with door.client(KEYS["booker"]) as booker, door.client(KEYS["ops"]) as ops:
        assert booker.get("/vip-bundles?status=failed").status_code == 403
        assert ops.post("/book-vip-bundle", json=request()).status_code == 403
        assert booker.post("/book-vip-bundle", json=request()).status_code == 201
        assert ops.get("/vip-bundles?status=finalized").status_code == 200
        refused = booker.get("/metrics")
        assert refused.status_code == 403 and "read" in only_error(refused)["message"]


def test_a_browser_uses_basic_auth_with_the_key_as_password(door: Door):
    token = base64.b64encode(f"anyone:{KEYS['shop']}".encode()).decode()
    with door.client() as browser:
        r = browser.get("/vip-bundles?status=failed", headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 200


def test_no_key_is_ever_logged(door: Door):
    with door.client(KEYS["shop"]) as shop:
        shop.post("/book-vip-bundle", json=request(), headers={"Correlation-ID": "order-7"})
        shop.get("/vip-bundles?status=failed")
    wrong = "k-wrong-guess-" + "9" * 32
    with door.client(wrong) as stranger:
        stranger.get("/vip-bundles?status=failed")
    log = door.log.read_text()
    assert "GET /vip-bundles?status=failed" in log  # the access log is on
    for secret in [*KEYS.values(), wrong]:
        assert secret not in log


def test_without_api_keys_the_door_refuses_to_listen_beyond_loopback():
    env = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
    out = subprocess.run(
        [sys.executable, "-m", "vip_bundles", "api", "--host", "0.0.0.0", "--port", "1"],
        env=local_stack.celery_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "without API_KEYS" in out.stdout and "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("client", "keys", "expected"),
    [(("203.0.113.9", 4711), None, 403), (("127.0.0.1", 4711), None, 200)],
)
def test_without_api_keys_only_loopback_clients_are_served(client, keys, expected, redis_url):
    # In process (an ASGI call with the client's address), so no packet leaves loopback.
    async def get() -> int:
        transport = httpx.ASGITransport(app=create_app(keys), client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            return (await http.get("/vip-bundles?status=failed")).status_code

    assert asyncio.run(get()) == expected


def test_malformed_api_keys_are_refused_without_echoing_the_key():
    good, secret = "k-good-" + "1" * 32, "k-secret-value-" + "2" * 32
    with pytest.raises(ValueError, match="API_KEYS entry 2") as refused:
        parse_api_keys(f"{good}:book,{secret}:fly")
    assert secret not in str(refused.value)
    assert DoorGuard  # the middleware every route sits behind


# --- limits ---------------------------------------------------------------------------------------


def test_a_body_over_64_kib_is_413_before_it_is_read(door: Door):
    with door.client(KEYS["shop"]) as shop:
        big = b"{" + b" " * (20 * 1024 * 1024) + b"}"
        declared = shop.post("/book-vip-bundle", content=big, headers=JSON)
        assert declared.status_code == 413
        assert only_error(declared)["field"] == "body"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
            yield b'{"customer_email": "'
            for _ in range(100):
                yield b"x" * 1024
            yield b'"}'

        streamed = shop.post("/book-vip-bundle", content=chunks(), headers=JSON)
        assert streamed.status_code == 413
        assert only_error(streamed)["field"] == "body"
        assert shop.post("/book-vip-bundle", json=request()).status_code == 201


@pytest.mark.parametrize("depth", [40, 20_000])
def test_a_body_that_nests_too_deep_is_422(door: Door, depth: int):
    body = b'{"passengers": ' + b"[" * depth + b"]" * depth + b"}"
    with door.client(KEYS["shop"]) as shop:
        r = shop.post("/book-vip-bundle", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert only_error(r) == {"field": "body", "message": only_error(r)["message"]}
    assert "deep" in only_error(r)["message"]


@pytest.mark.parametrize(
    "value", [b"x" * 129, b"x" * 8000, b"order\t42", b"caf\xe9", b"order\xc2\x8542"]
)
def test_a_bad_correlation_id_that_reaches_the_app_is_422_naming_it(door: Door, value: bytes):
    # Control characters other than tab never reach it: the parser answers its own 400
    # (tests/e2e/test_http_parser.py).
    with door.client(KEYS["shop"]) as shop:
        r = shop.post("/book-vip-bundle", json=request(), headers={"Correlation-ID": value})
    assert r.status_code == 422
    assert only_error(r)["field"] == "Correlation-ID"


def test_a_correlation_id_of_128_characters_is_kept(door: Door):
    with door.client(KEYS["shop"]) as shop:
        r = shop.post("/book-vip-bundle", json=request(), headers={"Correlation-ID": "c" * 128})
    assert r.status_code == 201 and r.headers["Correlation-ID"] == "c" * 128

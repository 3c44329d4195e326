"""What a web page, a rebound DNS name or a forged proxy header can make the door do
(intake-api.md, "Cross-site and proxies"): `vip-bundles api` in its own process, plain HTTP.

- a POST with a body that is not `application/json` -> 415 (a page cannot send JSON to
  another origin without a preflight, which the door never grants);
- a `Host` the door does not serve -> 400 (DNS rebinding);
- a POST with another site's `Origin` -> 403;
- `X-Forwarded-For` / `Forwarded` count only from `TRUSTED_PROXIES`, and never make a remote
  client loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tasks.celery_app import store
from tests.e2e.api_server import Door, start_door
from tests.helpers import request
from vip_bundles import local_stack
from vip_bundles.api import create_app

KEY = "k-cross-site-" + "3c" * 16
REMOTE = "203.0.113.9"  # TEST-NET-3: never this machine


@pytest.fixture(scope="module")
def door(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    """Default settings but a key (so that access is not what refuses)."""
    d = start_door(logdir, {"API_KEYS": f"{KEY}:book+read+operate"})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def listed(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    """A door told which names and origins it serves."""
    env = {
        "API_KEYS": f"{KEY}:book+read+operate",
        "ALLOWED_HOSTS": "api.example.com, 127.0.0.1",
        "ALLOWED_ORIGINS": "https://shop.example.com",
    }
    d = start_door(logdir, env)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def loopback_only(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    """No API_KEYS: the door serves loopback clients only; no trusted proxy."""
    d = start_door(logdir, {})
    yield d
    d.stop()


@pytest.fixture(scope="module")
def behind_proxy(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    """No API_KEYS, and the proxy in front of it is on this host (the tests play it)."""
    d = start_door(logdir, {"TRUSTED_PROXIES": "127.0.0.1/32,::1"})
    yield d
    d.stop()


def only_error(response: httpx.Response) -> dict[str, str]:
    (error,) = response.json()["errors"]
    return error


def book(client: httpx.Client, body: bytes, content_type: str | None, **headers: str):
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post("/book-vip-bundle", content=body, headers=headers)


# --- Content-Type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonp",
        "text/json",
    ],
)
def test_a_post_whose_body_is_not_json_is_415_and_books_nothing(door: Door, content_type):
    body = request(vip_bundle_id=str(uuid.uuid4()))
    with door.client(KEY) as client:
        r = book(client, httpx.Request("POST", "/", json=body).content, content_type)
    assert r.status_code == 415, r.text
    assert only_error(r)["field"] == "Content-Type"
    assert store().get(body["vip_bundle_id"]) is None


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_with_or_without_parameters_books(door: Door, content_type: str):
    body = request(vip_bundle_id=str(uuid.uuid4()))
    with door.client(KEY) as client:
        r = book(client, httpx.Request("POST", "/", json=body).content, content_type)
    assert r.status_code == 201, r.text


def test_a_post_without_a_body_needs_no_content_type(door: Door):
    with door.client(KEY) as client:
        r = client.post(f"/vip-bundles/{uuid.uuid4()}/resume")
        cancel = client.post(
            f"/vip-bundles/{uuid.uuid4()}/cancel",
            content=b"",
            headers={"Content-Type": "text/plain"},
        )
    assert r.status_code == 404, r.text  # past the guard: an unknown bundle
    assert cancel.status_code == 422  # no body: refused by the route (no reason), not 415


# --- Host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}", "10.0.0.7", "0.0.0.0"],
)
def test_a_host_the_door_does_not_serve_is_400(door: Door, host: str):
    host = host.format(port=door.port)
    with door.client(KEY) as client:
        for r in (
            client.get("/health", headers={"Host": host}),
            client.get("/vip-bundles?status=failed", headers={"Host": host}),
            client.post("/book-vip-bundle", json=request(), headers={"Host": host}),
        ):
            assert r.status_code == 400, (host, r.text)
            assert only_error(r)["field"] == "Host"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:80"])
def test_the_default_hosts_are_served_on_any_port(door: Door, host: str):
    with door.client(KEY) as client:
        r = client.get("/vip-bundles?status=failed", headers={"Host": host.format(port=door.port)})
    assert r.status_code == 200, r.text


def test_allowed_hosts_replaces_the_defaults(listed: Door):
    with listed.client(KEY) as client:
        assert client.get("/health", headers={"Host": "api.example.com"}).status_code == 200
        assert client.get("/health", headers={"Host": "API.example.com:8443"}).status_code == 200
        assert client.get("/health", headers={"Host": "localhost"}).status_code == 400


# --- Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:1",
        "https://127.0.0.1:{port}",
        "http://localhost.evil.example:{port}",
    ],
)
def test_a_post_from_another_sites_page_is_403_and_books_nothing(door: Door, origin: str):
    body = request(vip_bundle_id=str(uuid.uuid4()))
    headers = {"Origin": origin.format(port=door.port)}
    with door.client(KEY) as client:
        booked = client.post("/book-vip-bundle", json=body, headers=headers)
        resumed = client.post(f"/vip-bundles/{uuid.uuid4()}/resume", headers=headers)
    for r in (booked, resumed):
        assert r.status_code == 403, (origin, r.text)
        assert only_error(r)["field"] == "Origin"
    assert store().get(body["vip_bundle_id"]) is None


def test_the_doors_own_origin_and_reads_from_anywhere_pass(door: Door):
    own = {"Origin": f"http://127.0.0.1:{door.port}"}
    with door.client(KEY) as client:
        assert client.post("/book-vip-bundle", json=request(), headers=own).status_code == 201
        # A GET changes nothing, and no CORS header lets another page read the answer.
        r = client.get("/vip-bundles?status=failed", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_allowed_origins_are_served(listed: Door):
    with listed.client(KEY) as client:
        shop = {"Origin": "https://shop.example.com"}
        assert client.post("/book-vip-bundle", json=request(), headers=shop).status_code == 201
        other = {"Origin": "https://other.example.com"}
        assert client.post("/book-vip-bundle", json=request(), headers=other).status_code == 403


# --- proxies --------------------------------------------------------------------------------------


FORGED = [
    {"X-Forwarded-For": REMOTE},
    {"Forwarded": f"for={REMOTE}"},
    {"X-Forwarded-For": f"127.0.0.1, {REMOTE}"},  # what the client wrote, then what we saw
    {"Forwarded": f'for=127.0.0.1, for="{REMOTE}:4711"'},
    {"X-Forwarded-For": "127.0.0.1", "Forwarded": f"for={REMOTE}"},  # both: the remote wins
    {"X-Forwarded-For": REMOTE, "Forwarded": "for=127.0.0.1"},
    {"Forwarded": 'for="[2001:db8::7]"'},
]


@pytest.mark.parametrize("headers", FORGED, ids=lambda h: " | ".join(h.values()))
def test_behind_a_trusted_proxy_the_forwarded_client_decides(behind_proxy: Door, headers):
    """The proxy (here: the test, on loopback) says the client is remote: no API_KEYS, so the
    door refuses it, for X-Forwarded-For and Forwarded alike."""
    with behind_proxy.client() as client:
        r = client.get("/vip-bundles?status=failed", headers=headers)
        booked = client.post("/book-vip-bundle", json=request(), headers=headers)
    assert r.status_code == 403 and only_error(r)["field"] == "client", r.text
    assert booked.status_code == 403


def test_behind_a_trusted_proxy_its_scheme_makes_the_origin(behind_proxy: Door):
    https = {"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "https"}
    own = f"https://127.0.0.1:{behind_proxy.port}"
    with behind_proxy.client() as client:
        r = client.post("/book-vip-bundle", json=request(), headers={**https, "Origin": own})
        assert r.status_code == 201, r.text
        plain = f"http://127.0.0.1:{behind_proxy.port}"
        r = client.post("/book-vip-bundle", json=request(), headers={**https, "Origin": plain})
        assert r.status_code == 403


@pytest.mark.parametrize("headers", FORGED, ids=lambda h: " | ".join(h.values()))
def test_forwarding_headers_from_an_untrusted_peer_change_nothing(loopback_only: Door, headers):
    """No TRUSTED_PROXIES: the peer is the client, whatever the headers say (uvicorn's own
    proxy_headers, which trust 127.0.0.1 by default, are off)."""
    with loopback_only.client() as client:
        r = client.get("/vip-bundles?status=failed", headers=headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "headers",
    [{"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}, {"X-Real-IP": "::1"}],
)
def test_no_header_makes_a_remote_client_loopback(headers: dict[str, str], redis_url: str):
    # A remote peer needs an address this machine is not: in process, as uvicorn passes it.
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(None), client=(REMOTE, 4711))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            return await http.get("/vip-bundles?status=failed", headers=headers)

    r = asyncio.run(get())
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "client"

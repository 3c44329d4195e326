"""Tenants, the `metrics` scope and keys that are secrets (intake-api.md, "Access", "Tenants"),
against `vip-bundles api` in its own process with API_KEYS in its environment.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.celery_app import store
from tests.e2e.api_server import Door, start_door
from tests.helpers import request
from vip_bundles import local_stack
from vip_bundles.guard.keys import ApiKey

SHOP_A = "k-shop-a-" + "a1" * 16
SHOP_A_TOO = "k-shop-a-second-" + "a2" * 16  # given to the door as its sha256 only
SHOP_B = "k-shop-b-" + "b1" * 16
OPS = "k-ops-" + "0f" * 16
SCRAPER = "k-prometheus-" + "5e" * 16
API_KEYS = ",".join(
    [
        f"{SHOP_A}:book+read+operate@shop-a",
        f"sha256:{hashlib.sha256(SHOP_A_TOO.encode()).hexdigest()}:book+read@shop-a",
        f"{SHOP_B}:book+read@shop-b",
        f"{OPS}:read+operate",
        f"{SCRAPER}:metrics",
    ]
)
SETTLED = ("finalized", "failed", "cancelled", "compensation_failed")


@pytest.fixture(scope="module")
def door(worker: local_stack.Worker, logdir: Path) -> Iterator[Door]:
    d = start_door(logdir, {"API_KEYS": API_KEYS})
    yield d
    d.stop()


def settle(client: httpx.Client, bundle_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        bundle = client.get(f"/vip-bundles/{bundle_id}").json()
        if bundle.get("status") in SETTLED:
            return bundle
        time.sleep(0.1)
    raise AssertionError(f"bundle {bundle_id} did not settle")


def book(client: httpx.Client, **changes: Any) -> str:
    r = client.post("/book-vip-bundle", json=request(**changes))
    assert r.status_code == 201, r.text
    return r.json()["vip_bundle_id"]


@pytest.fixture(scope="module")
def fleet(door: Door) -> dict[str, list[str]]:
    """Three bundles of shop-a (one booked with its sha256-listed key) and two of shop-b, all
    finalized."""
    email_a, email_b = (
        f"a-{uuid.uuid4().hex[:8]}@example.com",
        f"b-{uuid.uuid4().hex[:8]}@example.com",
    )
    with door.client(SHOP_A) as a, door.client(SHOP_A_TOO) as a2, door.client(SHOP_B) as b:
        mine = [book(a, customer_email=email_a), book(a, customer_email=email_a)]
        mine.append(book(a2, customer_email=email_a))
        theirs = [book(b, customer_email=email_b) for _ in range(2)]
        for bundle_id in mine:
            assert settle(a, bundle_id)["status"] == "finalized"
        for bundle_id in theirs:
            assert settle(b, bundle_id)["status"] == "finalized"
    return {"a": mine, "b": theirs, "emails": [email_a, email_b]}


def test_a_bundle_belongs_to_the_tenant_of_the_key_that_booked_it(fleet):
    assert {store().require(i).tenant for i in fleet["a"]} == {"shop-a"}
    assert {store().require(i).tenant for i in fleet["b"]} == {"shop-b"}


def test_another_tenants_bundle_is_exactly_an_unknown_one(door: Door, fleet):
    theirs, unknown = fleet["b"][0], str(uuid.uuid4())
    with door.client(SHOP_A) as a:
        for path in ("/vip-bundles/{id}",):
            seen, never = a.get(path.format(id=theirs)), a.get(path.format(id=unknown))
            assert seen.status_code == never.status_code == 404
            assert seen.json() == never.json()
        html = {"Accept": "text/html"}
        page = a.get(f"/vip-bundles/{theirs}", headers=html)
        no_page = a.get(f"/vip-bundles/{unknown}", headers=html)
        assert page.status_code == no_page.status_code == 404
        assert page.text.replace(theirs, "ID") == no_page.text.replace(unknown, "ID")
        reason = {"reason": "not mine to cancel"}
        cancel, cancel_unknown = (
            a.post(f"/vip-bundles/{i}/cancel", json=reason) for i in (theirs, unknown)
        )
        assert cancel.status_code == cancel_unknown.status_code == 404
        assert cancel.json() == cancel_unknown.json()
        resume, resume_unknown = (a.post(f"/vip-bundles/{i}/resume") for i in (theirs, unknown))
        assert resume.status_code == resume_unknown.status_code == 404
        assert resume.json() == resume_unknown.json()
    assert store().require(theirs).status == "finalized"  # nothing happened to it


def test_a_tenant_lists_and_pages_over_its_own_bundles_only(door: Door, fleet):
    with door.client(SHOP_A) as a, door.client(OPS) as ops:
        everything = a.get("/vip-bundles", params={"status": "finalized", "limit": 500}).json()
        ids = [b["vip_bundle_id"] for b in everything["items"]]
        assert everything["total"] == len(ids) == 3
        assert set(ids) == set(fleet["a"])
        first = a.get("/vip-bundles", params={"status": "finalized", "limit": 2}).json()
        second = a.get(
            "/vip-bundles", params={"status": "finalized", "offset": 2, "limit": 2}
        ).json()
        assert (first["total"], second["total"]) == (3, 3)
        assert [b["vip_bundle_id"] for b in first["items"] + second["items"]] == ids
        assert a.get("/vip-bundles", params={"status": "failed"}).json()["total"] == 0
        fleet_wide = ops.get("/vip-bundles", params={"status": "finalized", "limit": 500}).json()
        assert set(fleet["a"] + fleet["b"]) <= {b["vip_bundle_id"] for b in fleet_wide["items"]}


def test_a_tenant_searches_its_own_bundles_only(door: Door, fleet):
    email_a, email_b = fleet["emails"]
    with door.client(SHOP_A) as a, door.client(OPS) as ops:
        assert a.get("/vip-bundles", params={"q": email_a}).json()["total"] == 3
        for text in (email_b, fleet["b"][0], store().require(fleet["b"][0]).booking_id):
            found = a.get("/vip-bundles", params={"q": text}).json()
            assert (found["total"], found["items"]) == (0, []), text
        assert ops.get("/vip-bundles", params={"q": email_b}).json()["total"] == 2


def test_a_tenant_cancels_its_own_and_an_operator_any(door: Door, fleet):
    reason = {"reason": "the customer changed plans"}
    with door.client(SHOP_A) as a, door.client(OPS) as ops:
        assert a.post(f"/vip-bundles/{fleet['a'][0]}/cancel", json=reason).status_code == 202
        assert ops.post(f"/vip-bundles/{fleet['b'][1]}/cancel", json=reason).status_code == 202
        assert ops.get(f"/vip-bundles/{fleet['a'][1]}").status_code == 200
    cancellation = store().require(fleet["a"][0]).cancellation
    assert cancellation is not None
    assert cancellation.requested_by == f"http:{ApiKey.of(SHOP_A, frozenset()).name}"


def test_the_same_id_from_another_tenant_is_another_request(door: Door, fleet):
    body = request(vip_bundle_id=fleet["a"][1])
    with door.client(SHOP_B) as b:
        r = b.post("/book-vip-bundle", json=body)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "vip_bundle_id"


def test_a_sha256_entry_is_the_key_and_has_the_keys_fingerprint(door: Door, fleet):
    with door.client(SHOP_A_TOO) as a2:
        r = a2.post(f"/vip-bundles/{fleet['a'][2]}/cancel", json={"reason": "by digest"})
        assert r.status_code == 202
    who = store().require(fleet["a"][2]).cancellation.requested_by  # type: ignore[union-attr]
    digest = hashlib.sha256(SHOP_A_TOO.encode()).hexdigest()
    assert who == f"http:key-{digest[:12]}"
    with door.client(f"sha256:{digest}") as replay:  # the digest itself is no key
        assert replay.get("/vip-bundles?status=finalized").status_code == 401


def test_fleet_wide_pages_refuse_a_tenants_key(door: Door):
    with door.client(SHOP_A) as a:
        for path in ("/", "/dashboard.json", "/metrics"):
            r = a.get(path)
            assert r.status_code == 403, (path, r.text)
            assert "tenant" in r.json()["errors"][0]["message"]


def test_a_metrics_key_reads_metrics_and_nothing_else(door: Door, fleet):
    with door.client(SCRAPER) as scraper:
        assert scraper.get("/metrics").status_code == 200
        for path in (
            f"/vip-bundles/{fleet['a'][1]}",
            "/vip-bundles?status=finalized",
            f"/vip-bundles?q={fleet['emails'][0]}",
            "/",
            "/dashboard.json",
            "/openapi.json",
        ):
            r = scraper.get(path)
            assert r.status_code == 403, (path, r.text)
        assert scraper.post("/book-vip-bundle", json=request()).status_code == 403
    with door.client(OPS) as ops:
        assert ops.get("/metrics").status_code == 200  # `read` reads metrics too


@pytest.mark.parametrize(
    ("entries", "position", "named"),
    [
        ([f"{OPS}:read", "k-short-7f3a9c:book"], 2, "k-short-7f3a9c"),
        (["k-" + "x" * 29 + ":read@shop-a"], 1, "k-" + "x" * 29),
        ([f"{OPS}:read", f"{SHOP_B}:book", "sha256:abc123:read"], 3, None),
        ([f"{OPS}:read@no/slashes"], 1, OPS),
    ],
    ids=["short key", "31 characters", "bad digest", "bad tenant"],
)
def test_a_bad_key_entry_stops_the_door_naming_its_position_not_the_key(
    entries: list[str], position: int, named: str | None
):
    out = subprocess.run(
        [sys.executable, "-m", "vip_bundles", "api", "--port", "1"],
        env=local_stack.celery_env(API_KEYS=",".join(entries)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"API_KEYS entry {position}" in said and "Traceback" not in said, said
    if named is not None:
        assert ApiKey.of(named, frozenset()).name in said
        assert named not in said
    for entry in entries:
        assert entry.rpartition(":")[0] not in said or entry.startswith("sha256:")

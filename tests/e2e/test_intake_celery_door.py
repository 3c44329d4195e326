"""Door 1 from outside: a separate Python process that imports only celery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from process_manager.bundle import Status
from tests.conftest import RUN_PREFIX
from tests.helpers import Saga, request

OUTSIDER = r"""
import json, sys
from celery import Celery

broker, prefix, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
app = Celery(broker=broker, backend=broker)
app.conf.broker_transport_options = app.conf.result_backend_transport_options = {
    "global_keyprefix": prefix}
result = app.send_task("vip_bundle.book", kwargs=body, queue="vip-bundles")
try:
    out = {"answer": result.get(timeout=30)}
except Exception as exc:
    out = {"error": type(exc).__name__, "message": str(exc)}
ours = sorted(m for m in sys.modules if m.split(".")[0] in
              ("tasks", "process_manager", "vip_bundles", "celeryconfig"))
out["imported_ours"] = ours
print(json.dumps(out))
"""


def send_from_outside(body: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", OUTSIDER, os.environ["REDIS_URL"], RUN_PREFIX, json.dumps(body)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("imported_ours") == []
    return out


def test_a_service_with_only_celery_books_a_bundle(saga: Saga):
    bundle_id = str(uuid.uuid4())
    out = send_from_outside(request(vip_bundle_id=bundle_id))
    assert out["answer"]["vip_bundle_id"] == bundle_id
    assert set(out["answer"]) == {"vip_bundle_id", "booking_id"}
    assert saga.wait(bundle_id).status is Status.FINALIZED


def test_a_bad_request_from_outside_gets_an_error_naming_every_field(saga: Saga):
    body = request(customer_email="nope", number_of_tickets=0)
    del body["show_id"]
    out = send_from_outside(body)
    assert out["error"] == "InvalidRequest"
    for field in ("customer_email", "number_of_tickets", "show_id"):
        assert field in out["message"]

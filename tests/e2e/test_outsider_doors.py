"""The Celery door and the events stream, used exactly as documented, by another service.

Each snippet runs as written (the contract's lines from ../shared/intake-api.md and every
Python block of the README, found by pytest-examples) in a separate interpreter that has only
`celery[redis]` installed and only the deployment's REDIS_URL (tests/outsider.py), against the
session's worker started with the product's default settings. Text and test cannot drift: the
test reads the text.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from pytest_examples import CodeExample, find_examples

from process_manager.bundle import Status
from tests.helpers import Saga, request
from tests.outsider import Outsider, outsider

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT.parent / "shared" / "intake-api.md"
# A snippet on Sentinel runs against a sentinel stack (tests/e2e/test_sentinel_failover.py).
README_EXAMPLES = [
    e
    for e in find_examples(ROOT / "README.md")
    if e.prefix == "python" and "sentinel://" not in e.source
]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Outsider:
    return outsider(tmp_path_factory.mktemp("outsider"))


def contract_door_line() -> str:
    """The contract's one Python line for door 1, as written."""
    if not CONTRACT.exists():
        pytest.skip(f"the contract is not beside the checkout ({CONTRACT})")
    blocks = [e.source for e in find_examples(CONTRACT) if e.prefix == "python"]
    door = [b for b in blocks if 'send_task("vip_bundle.book"' in b]
    assert len(door) == 1, blocks
    return door[0]


def test_the_contracts_line_books_a_bundle_with_default_settings(
    saga: Saga, caller: Outsider, redis_url: str
):
    bundle_id = str(uuid.uuid4())
    # What the contract's line leaves to the caller: the import, REDIS_URL and the request.
    prelude = (
        "import os\nfrom celery import Celery\n"
        'REDIS_URL = os.environ["REDIS_URL"]\n'
        f"request = {json.dumps(request(vip_bundle_id=bundle_id))}\n"
    )
    caller.run(prelude + contract_door_line(), redis_url)
    assert saga.wait(bundle_id).status is Status.FINALIZED


@pytest.mark.parametrize("example", README_EXAMPLES, ids=lambda e: f"README.md:{e.start_line}")
def test_every_readme_snippet_runs_as_written(
    example: CodeExample, saga: Saga, caller: Outsider, redis_url: str
):
    if "send_task" in example.source:  # the request is the README's own; book it again
        out = caller.run(example.source, redis_url)
        bundle_id = UUID.search(out)
        assert bundle_id, out
        cancels = 'send_task("vip_bundle.cancel"' in example.source
        expected = Status.CANCELLED if cancels else Status.FINALIZED
        assert saga.wait(bundle_id.group()).status is expected
        if cancels:
            assert "'status': 'cancel" in out, out
    else:
        saga.run(request())  # something on the stream for the consumer to read
        out = caller.run(example.source, redis_url)
        assert "VipBundleInitialized_v1" in out and "VipBundleFinalized_v1" in out, out


def test_a_bad_request_from_outside_gets_an_error_naming_every_field(
    saga: Saga, caller: Outsider, redis_url: str
):
    body = request(customer_email="nope", number_of_tickets=0)
    del body["show_id"]
    out = caller.run(
        f"""
        import os
        from celery import Celery

        app = Celery(broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
        try:
            app.send_task("vip_bundle.book", kwargs={body!r}, queue="vip-bundles").get(timeout=30)
        except Exception as exc:
            print(type(exc).__name__, exc)
        """,
        redis_url,
    )
    assert out.startswith("InvalidRequest"), out
    for field in ("customer_email", "number_of_tickets", "show_id"):
        assert field in out

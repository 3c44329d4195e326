"""adapters/telemetry.py on its own: when tracing is on, OTLP over gRPC, and what stays off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from adapters import telemetry
from tests.otlp_receiver import OtlpGrpcReceiver
from vip_bundles import local_stack

# A process of ours: set up from the environment, one span with a bundle's attributes, its
# trace context, then the spans flushed as a worker process ending does.
ONE_SPAN = """
import sys
import tasks, vip_bundles.api
from adapters import telemetry
print(telemetry.setup_tracing("cli"), "opentelemetry.sdk.trace" in sys.modules)
with telemetry.span("vip_bundle.check", id="b-1", step="BookFlight", leg="inbound"):
    print(telemetry.traceparent())
telemetry.shutdown()
"""


def run(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in local_stack.celery_env().items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", ONE_SPAN],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_configured(env: dict[str, str], on: bool):
    assert telemetry.wanted(env) is on


def test_off_imports_no_sdk_and_gives_no_context():
    # (The script imports the tasks and the HTTP door too: none of them loads the SDK.)
    assert run({})[:2] == ["False False", "None"]


def test_spans_go_out_over_grpc():
    with OtlpGrpcReceiver() as receiver:
        lines = run(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_SERVICE_NAME": "vip-bundles-check",
            }
        )
        assert lines[0] == "True True"
        (span,) = receiver.wait_for(lambda spans: len(spans) == 1, timeout=10)
    assert span.name == "vip_bundle.check" and span.service == "vip-bundles-check"
    assert span.attributes == {
        "vip_bundle.id": "b-1",
        "vip_bundle.step": "BookFlight",
        "vip_bundle.leg": "inbound",
    }
    assert lines[1].split("-")[:3] == ["00", span.trace_id, span.span_id]


def test_a_bad_protocol_is_refused_naming_the_variable():
    done = subprocess.run(
        [sys.executable, "-c", ONE_SPAN],
        env={
            **local_stack.celery_env(),
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "OTEL_EXPORTER_OTLP_PROTOCOL" in done.stderr


def test_trace_ids_and_links():
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert telemetry.trace_id_of(tp) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert telemetry.trace_id_of(None) is None and telemetry.trace_id_of("junk") is None
    url = telemetry.trace_url("https://g/explore?traceId={trace_id}", "abc")
    assert url == "https://g/explore?traceId=abc"
    assert telemetry.trace_url(None, "abc") is None


def test_access_log_lines_hide_the_search_text():
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/vip-bundles?q=ann%40example.com&status=failed", "1.1", 200),
        None,
    )
    assert telemetry.NoQueryString().filter(record)
    shown = '127.0.0.1:5 - "GET /vip-bundles?q=...&status=failed HTTP/1.1" 200'
    assert record.getMessage() == shown
    assert telemetry.without_search("/vip-bundles/x") == "/vip-bundles/x"


def test_json_lines_leave_out_celerys_task_arguments():
    record = logging.LogRecord("celery.app.trace", logging.INFO, "", 0, "Task %s", ("x",), None)
    record.data = {"id": "t-1", "name": "vip_bundle.book", "kwargs": "{'customer_email': 'a@b'}"}
    line = json.loads(telemetry.JsonLogFormatter().format(record))
    assert line["data"] == {"id": "t-1", "name": "vip_bundle.book"}
    assert {"time", "level", "logger", "message"} <= line.keys()


# A partner call through adapters/partner_tracing.py, to a server that answers 409 and echoes
# the `traceparent` it got: the span is a client span, an error, naming the partner and the
# bundle, and the partner saw its context.
PARTNER_CALL = """
import http.server, json, threading, httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from adapters import partner_tracing

class Sold(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = (self.headers.get("traceparent") or "").encode()
        self.send_response(409)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass

server = http.server.HTTPServer(("127.0.0.1", 0), Sold)
threading.Thread(target=server.serve_forever, daemon=True).start()
spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
partner_tracing.instrument(provider.get_tracer("t"), lambda: "b-1")
url = f"http://127.0.0.1:{server.server_port}/transportation-api/flight-tickets"
seen = httpx.put(url, json={"passenger": "Ann"}).text
(span,) = spans.get_finished_spans()
ctx = span.get_span_context()
print(span.kind.name, span.name, span.status.status_code.name, json.dumps(dict(span.attributes)))
print(seen.split("-")[:3] == ["00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"])
"""


def test_a_partner_call_is_a_client_span_that_carries_its_context():
    done = subprocess.run(
        [sys.executable, "-c", PARTNER_CALL],
        env=local_stack.celery_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    span, saw = done.stdout.splitlines()
    assert span.startswith("CLIENT PUT ERROR ")
    attributes = json.loads(span.removeprefix("CLIENT PUT ERROR "))
    assert attributes["http.status_code"] == 409
    assert attributes["vip_bundle.partner"] == "flights"
    assert attributes["vip_bundle.id"] == "b-1"
    assert "Ann" not in span  # never the body
    assert saw == "True"

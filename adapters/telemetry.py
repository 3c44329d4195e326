"""Traces (OpenTelemetry) and the log format, set up from the environment in one place.

Tracing is off unless configured the standard way: on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER` other than `none`) is set and
`OTEL_SDK_DISABLED` is not `true`. The SDK reads the rest itself (`OTEL_SERVICE_NAME`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_PROTOCOL`, headers, certificates...). Off, the SDK is
never imported and the hooks the work calls (`annotate`, `traceparent`, `bundle_span`) return
at once: the hot path pays one global lookup.

The maintained ASGI instrumentation wraps the HTTP door (`vip_bundles/api.py`); Celery and
httpx are wrapped from outside by two small modules of ours, which cost a bundle a fraction of
what their instrumentations did: `adapters/celery_tracing.py` (a run span per task, the trace
context in the task headers in the instrumentation's format, no publish spans) and
`adapters/partner_tracing.py` (a span per partner call, `traceparent` sent to the partner).
The work only adds the bundle id, step, leg and attempt where it knows them. A
bundle's trace context is stored on the bundle (`traceparent`), so work that starts from the
stored state, not from a message (a cancel, the reconciler, an operator's resume), joins the
bundle's trace (`bundle_span`), linked to the trace that asked.

`LOG_FORMAT=json`: one JSON object a line (time, level, logger, message, and when known the
bundle and correlation ids, the Celery task's name and id, the trace and span ids).
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol, TypeVar

from pythonjsonlogger.json import JsonFormatter

T = TypeVar("T")
_on = False  # tracing set up in this process
_set_up_in = 0  # the process (pid) that ran `setup_tracing`: a forked child sets up anew
_tracer: Any = None

# The bundle a task (or request) works on, for log lines and the partner calls' spans.
_bundle: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "vip_bundle", default=None
)


class TracedBundle(Protocol):
    vip_bundle_id: str
    correlation_id: str
    traceparent: str | None


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Is tracing configured? (The SDK's own variables; nothing of ours.)"""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing() -> bool:
    return _on


def setup_tracing(role: str, celery: bool = True) -> bool:
    """Set up tracing in this process if configured (once per process; a forked child calls
    it again, after the fork, so its exporter thread is its own). `role` names the process
    (`worker`, `beat`, `api`, `cli`) in the resource. True when tracing is on."""
    global _on, _set_up_in, _tracer
    if _set_up_in == os.getpid():
        return _on
    _set_up_in = os.getpid()
    if not wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Celery's and httpx's spans from modules of ours, cheaper than the instrumentations.
    from adapters import celery_tracing, partner_tracing

    attributes = {"service.namespace": "vip-bundles", "vip_bundles.process": role}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"vip-bundles-{role}"
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("vip_bundles")
    partner_tracing.instrument(_tracer, _bundle_id)
    if celery:
        celery_tracing.instrument(provider)
    _on = True
    return True


def _exporters() -> list[Any]:
    """OTEL_TRACES_EXPORTER (`otlp` by default; `console` for a look), over the protocol
    OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names: `http/protobuf` (default) or `grpc`."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    exporters: list[Any] = []
    for name in (n.strip() for n in names.split(",")):
        if name == "otlp":
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            elif protocol == "http/protobuf":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,  # type: ignore[assignment]
                )
            else:
                raise ValueError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf"
                )
            exporters.append(OTLPSpanExporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name not in ("none", ""):
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not otlp, console or none")
    return exporters


def shutdown() -> None:
    """Send the spans still buffered (a worker process ending)."""
    if _on:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def _bundle_id() -> str | None:
    return bundle[0] if (bundle := _bundle.get()) is not None else None


# --- what the work calls (each returns at once when tracing is off) -------------------------


def enter_bundle(vip_bundle_id: str | None, correlation_id: str | None = None) -> None:
    """Name the bundle this task or request works on, for its log lines (a task's start
    clears it). Not for spans: `annotate` does both."""
    _bundle.set((vip_bundle_id, correlation_id) if vip_bundle_id else None)


def annotate(bundle: TracedBundle | None = None, **attributes: str | int | None) -> None:
    """Name the bundle (and step, leg, attempt, outcome...) on the current span, and the bundle
    on this task's log lines. Never a customer's e-mail or name: ids and counts only."""
    if bundle is not None:
        _bundle.set((bundle.vip_bundle_id, bundle.correlation_id))
    if not _on:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    attrs = {f"vip_bundle.{k}": v for k, v in attributes.items() if v is not None}
    if bundle is not None:
        attrs["vip_bundle.id"] = bundle.vip_bundle_id
        attrs["vip_bundle.correlation_id"] = bundle.correlation_id
    span.set_attributes(attrs)  # one lock taken, not one per attribute


def traceparent() -> str | None:
    """The current span's W3C `traceparent` (to store on a bundle, or in an event's header);
    None when tracing is off or no span is current."""
    if not _on:
        return None
    from opentelemetry import trace

    # As the W3C propagator writes it for a partner (flags and all), without its carrier.
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def span(name: str, **attributes: str | int | None) -> AbstractContextManager[Any]:
    """A span of our own around work no instrumentation sees (the chain's error callback,
    which Celery calls in the failed task's process, not as a task)."""
    if not _on:
        return nullcontext()
    attrs = {f"vip_bundle.{k}": v for k, v in attributes.items() if v is not None}
    return _tracer.start_as_current_span(name, attributes=attrs)


def bundle_span(
    name: str,
    vip_bundle_id: str,
    stored: Callable[[], str | None] | str | None,
    **attributes: str | int | None,
) -> AbstractContextManager[Any]:
    """A span in the bundle's own trace, for work that starts from the stored bundle, not a
    message: a cancel, the reconciler, an operator's resume. Its parent is the bundle's stored
    `traceparent` (`stored`, or a function reading it: only called when tracing is on); the
    trace that asked (the operator's request, the reconciler's pass) is linked. Without a
    stored context it is an ordinary child of the current span."""
    if not _on:
        return nullcontext()
    return _bundle_span(name, vip_bundle_id, stored() if callable(stored) else stored, attributes)


@contextmanager
def _bundle_span(
    name: str, vip_bundle_id: str, stored: str | None, attributes: dict[str, Any]
) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    attrs = {f"vip_bundle.{k}": v for k, v in attributes.items() if v is not None}
    attrs["vip_bundle.id"] = vip_bundle_id
    parent, links = None, []
    asking = trace.get_current_span().get_span_context()
    if stored:
        parent = TraceContextTextMapPropagator().extract({"traceparent": stored})
        own = trace.get_current_span(parent).get_span_context()
        if asking.is_valid and asking.trace_id == own.trace_id:
            parent = None  # already in the bundle's trace (a cancel taking it up): a child
        elif asking.is_valid:
            links.append(trace.Link(asking, {"vip_bundle.link": "requested_by"}))
    with _tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs) as s:
        yield s


def thread_pool(max_workers: int, thread_name_prefix: str) -> ThreadPoolExecutor:
    """A thread pool whose calls run in the submitter's context (its span, its bundle) when
    tracing is on: a partner call made from the pool is then a child of its step's span."""
    if not _on:
        return ThreadPoolExecutor(max_workers, thread_name_prefix)
    return _ContextPool(max_workers, thread_name_prefix)


class _ContextPool(ThreadPoolExecutor):
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) of a `traceparent`, None if there is none."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def trace_url(template: str | None, trace_id: str | None) -> str | None:
    """TRACE_URL_TEMPLATE with the trace id in it (`...?traceId={trace_id}`)."""
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", trace_id)


# --- log lines ------------------------------------------------------------------------------


class JsonLogFormatter(JsonFormatter):
    """One JSON object a line: time, level, logger, message, and what is known of the work."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Celery passes each task's arguments along (`extra={"data": ...}`): the Celery door's
        # are a customer's request (an e-mail, names). The text format never showed them.
        if isinstance(data := log_data.get("data"), dict) and ("args" in data or "kwargs" in data):
            log_data["data"] = {k: v for k, v in data.items() if k not in ("args", "kwargs")}
        if (bundle := _bundle.get()) is not None:
            log_data["vip_bundle_id"], log_data["correlation_id"] = bundle
        # Celery's current task, when Celery is loaded at all (the simulator has none).
        if (state := sys.modules.get("celery._state")) is not None:
            task = state.get_current_task()
            if task is not None and task.request.id is not None:
                log_data["task_name"], log_data["task_id"] = task.name, task.request.id
        if _on:
            from opentelemetry import trace

            ctx = trace.get_current_span().get_span_context()
            if ctx.is_valid:
                log_data["trace_id"] = f"{ctx.trace_id:032x}"
                log_data["span_id"] = f"{ctx.span_id:016x}"


SEARCH_PARAMETERS = frozenset({"q"})  # searched by a customer's e-mail or name


def without_search(target: str) -> str:
    """A request target with the values of its search parameters hidden (`?q=...` finds a
    bundle by a customer's e-mail, which must not reach a log line or a span); the rest kept."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query, keep_blank_values=True)
    hidden = [(k, "..." if k in SEARCH_PARAMETERS else v) for k, v in pairs]
    return f"{path}?{urlencode(hidden, safe='.')}"


class NoQueryString(logging.Filter):
    """The access log with search texts hidden (`GET /vip-bundles?q=...&status=failed` is
    logged as `GET /vip-bundles?q=...&status=failed` with the text of `q` left out)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], without_search(args[2]), *args[3:])
        return True


def json_logs() -> bool:
    return os.environ.get("LOG_FORMAT", "text").strip().lower() == "json"


def use_json_format(logger: logging.Logger) -> None:
    """Give `logger`'s handlers the JSON format when LOG_FORMAT=json (Celery's
    `after_setup_logger` / `after_setup_task_logger`)."""
    if json_logs():
        for handler in logger.handlers:
            handler.setFormatter(JsonLogFormatter())


def setup_logging(level: int = logging.INFO) -> None:
    """A process of our own (the HTTP door, the CLI): log lines to stderr, as LOG_FORMAT says;
    the access log never carries a query string."""
    logging.getLogger("uvicorn.access").addFilter(NoQueryString())
    if not json_logs():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

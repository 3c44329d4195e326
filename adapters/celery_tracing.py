"""Celery's side of tracing, in place of opentelemetry-instrumentation-celery (issue 27).

The instrumentation was the largest part of what tracing cost a bundle: a PRODUCER span for
every message sent (3 of 11 spans a bundle, each with its own context switch and attributes)
and ~10 attributes on every span (`celery.delivery_info` as a string, hostname, time
limits...), all encoded to protobuf by the exporter. Here, with the same wire format:

- sending a task injects the current context into the message's headers (what the
  instrumentation's publish hook injects, from the current span rather than a span of its
  own): a task's run is the child of the span that sent it (the intake, a step, the error
  callback), and a Celery caller that uses the instrumentation is continued as before;
- running one is a CONSUMER span `run/<task name>`, its parent the context in the request
  (`traceparent`, `tracestate` as headers), with three attributes: task name, message id and
  queue. A failure marks it an error with the exception (unless the task `throws` it), a
  retry names its reason.

Only imported when tracing is on (`adapters/telemetry.py`).
"""

from __future__ import annotations

import threading
from typing import Any

from celery import signals
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

_tracer: Any = None
# The span of each task running in this process, and the context token to detach at its end,
# by (task id, thread): a task id can run twice at once (a redelivery on a threads pool).
_running: dict[tuple[str, int], tuple[trace.Span, object]] = {}


class _RequestGetter(Getter[Any]):
    """Reads `traceparent` and `tracestate` from a task's request: Celery copies the message's
    headers onto it as attributes (the instrumentation's consumer reads them the same way)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_getter = _RequestGetter()


def instrument(tracer_provider: Any = None) -> None:
    """Connect the handlers (once per process: `setup_tracing` runs once)."""
    global _tracer
    _tracer = trace.get_tracer("vip_bundles.celery", tracer_provider=tracer_provider)
    signals.before_task_publish.connect(_inject, weak=False)
    signals.task_prerun.connect(_start, weak=False)
    signals.task_postrun.connect(_end, weak=False)
    signals.task_failure.connect(_failed, weak=False)
    signals.task_retry.connect(_retried, weak=False)


def _inject(headers: dict[str, Any] | None = None, **_: Any) -> None:
    # Protocol 2: the message's headers become the request's attributes at the worker.
    if headers is not None:
        inject(headers)


def _start(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task_id is None:
        return
    request = task.request
    parent = extract(request, getter=_getter) or None  # none sent: a trace of its own
    attributes = {"celery.task_name": task.name, "messaging.message_id": task_id}
    if queue := (request.delivery_info or {}).get("routing_key"):
        attributes["messaging.destination"] = queue
    span = _tracer.start_span(
        f"run/{task.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )
    token = context_api.attach(trace.set_span_in_context(span, parent))
    _running[(task_id, threading.get_ident())] = (span, token)


def _end(task_id: str | None = None, **_: Any) -> None:
    if task_id is None or (found := _running.pop((task_id, threading.get_ident()), None)) is None:
        return
    span, token = found
    span.end()
    context_api.detach(token)  # type: ignore[arg-type]


def _current(task_id: str | None) -> trace.Span | None:
    if task_id is None or (found := _running.get((task_id, threading.get_ident()))) is None:
        return None
    return found[0] if found[0].is_recording() else None


def _failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    if (span := _current(task_id)) is None:
        return
    if exception is not None and isinstance(exception, getattr(sender, "throws", ())):
        return  # an expected error, as the instrumentation leaves it
    if exception is not None:
        span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, str(exception) if exception else None))


def _retried(request: Any = None, reason: Any = None, **_: Any) -> None:
    if reason and (span := _current(getattr(request, "id", None))) is not None:
        span.set_attribute("celery.retry.reason", str(reason))

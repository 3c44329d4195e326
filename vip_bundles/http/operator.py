"""The operator's routes: the console, its data, Prometheus metrics, health.

    GET /                -> the operator's console (HTML); GET /dashboard.json its data
    GET /metrics         -> Prometheus text format (scope `metrics` or `read`)
    GET /health          -> 200 when Redis answers (no key needed)

The console and /metrics count every tenant's bundles: a tenant's key is refused there by the
guard (vip_bundles/guard/tenants.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from adapters.metrics import RedisCollector
from adapters.metrics_memory import MemoryCollector
from adapters.settings import get_settings
from process_manager.bundle import Status
from process_manager.messages import utcnow
from vip_bundles.console_view import MOVES_WINDOW_MIN, console_context, console_data
from vip_bundles.http.bundles import MAX_PAGE, MAX_QUERY
from vip_bundles.http.errors import ERRORS_422, Errors
from vip_bundles.memory_view import memory_view
from vip_bundles.pages import render
from vip_bundles.partners_view import COLUMNS, partners_view

CONSOLE_LIST = 20  # rows in each of the console's lists

router = APIRouter()


@router.get("/", response_class=HTMLResponse, responses=ERRORS_422)
def console(q: Annotated[str | None, Query(max_length=MAX_QUERY)] = None) -> HTMLResponse:
    """The operator's console: the fleet on the saga's diagram, parked and recent failures,
    search. It refreshes its numbers from /dashboard.json."""
    from tasks.archive import finder

    s = get_settings()
    found = finder().search(q)[:MAX_PAGE] if q and q.strip() else None
    links = {"flower": s.flower_url, "metrics": "metrics", "json": "dashboard.json"}
    context = console_context(_console_data(), q, found, links)
    page = render(
        "dashboard.html",
        **context,
        partner_columns=COLUMNS,
        refresh_ms=int(s.console_refresh_s * 1000),
    )
    return HTMLResponse(page)


@router.get("/dashboard.json")
def console_json() -> dict[str, Any]:
    """The console's numbers and lists (what the page refreshes itself with)."""
    return _console_data()


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    """Prometheus text format, summed over every worker through Redis."""
    from tasks.celery_app import store

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(store()))
    registry.register(MemoryCollector(store(), get_settings().archive_url is not None))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/health", responses={503: {"model": Errors}})
def health() -> dict[str, str]:
    from tasks.celery_app import redis_client

    redis_client().ping()  # a RedisError becomes a 503 (vip_bundles/http/errors.py)
    return {"status": "ok", "redis": "ok"}


def _console_data() -> dict[str, Any]:
    from tasks.celery_app import store

    st = store()
    data = console_data(
        counts=st.counts(),
        moves=st.recent_moves(MOVES_WINDOW_MIN),
        parked=st.list(Status.COMPENSATION_FAILED, 0, CONSOLE_LIST),
        failed=st.list(Status.FAILED, 0, CONSOLE_LIST),
        cancelled=st.list(Status.CANCELLED, 0, CONSOLE_LIST),
        now=utcnow(),
    )
    return {**data, "memory": memory_view(st), "partners": partners_view(st)}

"""Tenants: a key with `@tenant` sees only its tenant's bundles (shared/intake-api.md).

A bundle booked over HTTP with such a key belongs to the tenant (`Bundle.tenant`). To that key
any other bundle is exactly an unknown one: the routes answer the same 404 (`visible`), lists
page over the tenant's own status indexes, and search keeps its tenant's matches only.

The console (`GET /`, `/dashboard.json`) and `/metrics` count the whole fleet: a tenant's key
is refused there (403, `FLEET_ONLY`) rather than shown other tenants' numbers. Keys without a
tenant (operators) see every bundle.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # also a part of Redis key names
FLEET_PATHS = frozenset({"/", "/dashboard.json", "/metrics"})
FLEET_ONLY = (
    "this key belongs to a tenant and sees only its bundles; the console, /dashboard.json and "
    "/metrics count every tenant's: use an operator's key (one without @tenant)"
)


class Owned(Protocol):
    tenant: str | None


def tenant_of(state: Any) -> str | None:
    """The tenant of the key that made the request (`request.state`), None for operators."""
    return getattr(state, "tenant", None)


def visible(bundle: Owned | None, tenant: str | None) -> bool:
    """May a key of `tenant` (None: an operator) see this bundle?"""
    return bundle is not None and (tenant is None or bundle.tenant == tenant)


def fleet_wide(method: str, path: str) -> bool:
    """A route that shows every tenant's bundles at once."""
    return method in ("GET", "HEAD") and path in FLEET_PATHS

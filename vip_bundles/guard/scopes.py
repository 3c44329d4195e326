"""Which scopes each route needs (shared/intake-api.md, "Access")."""

from __future__ import annotations

SCOPES = ("book", "read", "operate", "metrics")
OPEN = frozenset[str]()  # a route anyone may call

_READ = frozenset({"read"})


def required_scopes(method: str, path: str) -> frozenset[str]:
    """The scopes of which a key needs one for this route (OPEN: none needed)."""
    reading = method in ("GET", "HEAD")
    if path == "/health" and reading:
        return OPEN
    if path == "/metrics" and reading:
        # Fleet-wide counts and timings, no customer's data: a scraper's key needs no more.
        return frozenset({"metrics", "read"})
    if method == "POST" and path == "/book-vip-bundle":
        return frozenset({"book"})
    if method == "POST" and path.startswith("/vip-bundles/") and path.endswith("/cancel"):
        return frozenset({"book", "operate"})  # a customer's service or an operator
    if reading:
        return _READ  # pages, data and the OpenAPI document
    return frozenset({"operate"})  # the other operator actions (resume, ...)

"""Requests a web page could make the door act on (shared/intake-api.md, "Cross-site and
proxies"), refused before anything else is looked at:

- `Host` not one the door serves -> 400 (DNS rebinding: a page of evil.example whose name now
  points at 127.0.0.1 still sends `Host: evil.example`). `ALLOWED_HOSTS`, comma-separated host
  names or addresses, any port; default: the address it listens on, `localhost`, `127.0.0.1`
  and `[::1]`.
- a state-changing request (`POST`, ...) with an `Origin` that is not the door's own (same
  scheme, host and port as the request's `Host`) nor in `ALLOWED_ORIGINS` -> 403.
- a state-changing request with a body whose `Content-Type` is not `application/json`
  (parameters such as charset allowed) -> 415: a page cannot send that type to another origin
  without a CORS preflight, which this door never grants. A `POST` without a body (resume)
  needs no type.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_name(host: str) -> str:
    """`Host`'s host part, normalized: `[::1]:8000` -> `::1`, `LocalHost.:80` -> `localhost`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    return name.rstrip(".")


def allowed_hosts(setting: str | None, listen_host: str | None) -> frozenset[str]:
    """The host names the door serves: `ALLOWED_HOSTS`, else the defaults and where it listens."""
    if setting and setting.strip():
        names: Iterable[str] = setting.split(",")
    else:
        names = [*DEFAULT_HOSTS, *([listen_host] if listen_host else [])]
    return frozenset(host_name(_bracketed(n)) for n in names if n.strip())


def _bracketed(name: str) -> str:
    """A bare IPv6 address (`::1`, as `--host` takes it) as a Host header writes it."""
    name = name.strip()
    try:
        if isinstance(ipaddress.ip_address(name), ipaddress.IPv6Address):
            return f"[{name}]"
    except ValueError:
        pass
    return name


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Origin | None:
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            return None
        return cls(scheme, parts.hostname.rstrip("."), port or _DEFAULT_PORTS[scheme])


def allowed_origins(setting: str | None) -> frozenset[Origin]:
    """`ALLOWED_ORIGINS`: comma-separated origins (`https://shop.example.com`); a bad one is a
    ValueError naming it."""
    found = set()
    for text in (setting or "").split(","):
        if text.strip():
            origin = Origin.parse(text)
            if origin is None:
                raise ValueError(f"ALLOWED_ORIGINS: {text.strip()!r} is not scheme://host[:port]")
            found.add(origin)
    return frozenset(found)


def own_origin(scheme: str, host: str) -> Origin | None:
    """The door's own origin as this request reached it: its scheme and `Host`."""
    return Origin.parse(f"{scheme}://{host.strip()}") if host.strip() else None


def host_problem(host: str | None, allowed: frozenset[str]) -> str | None:
    if not host:
        return "required"
    if host_name(host) not in allowed:
        return "not a host this door serves (see ALLOWED_HOSTS)"
    return None


def origin_problem(
    method: str, headers: Mapping[str, str], scheme: str, extra: frozenset[Origin]
) -> str | None:
    origin = headers.get("origin")
    if method in SAFE_METHODS or origin is None:
        return None
    parsed = Origin.parse(origin)
    if parsed is not None and (
        parsed == own_origin(scheme, headers.get("host", "")) or parsed in extra
    ):
        return None
    return "another site's page may not act here (see ALLOWED_ORIGINS)"


def has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or bool(length and length.strip() not in ("", "0"))


def content_type_problem(method: str, headers: Mapping[str, str]) -> str | None:
    if method in SAFE_METHODS or not has_body(headers):
        return None
    media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != JSON:
        return f"send the body as {JSON}"
    return None

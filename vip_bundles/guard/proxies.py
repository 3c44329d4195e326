"""Who is the client: the connection's peer, or, behind a trusted proxy, whom it forwards.

`X-Forwarded-For` and `Forwarded` (RFC 7239) are believed only when the connection comes from
an address in `TRUSTED_PROXIES` (addresses or CIDRs, comma-separated; default none). Then the
client is the rightmost address of the chain that is not itself a trusted proxy (what the
proxy nearest to us saw; whatever a client writes into the header sits to the left of it), and
`X-Forwarded-Proto` / `proto=` give the scheme. Both headers are read the same way; when both
are present and name different clients, the one that is not loopback wins, so that no header
can turn a remote client into a loopback one.

uvicorn's own `proxy_headers` stays off (`vip_bundles.api.SERVER_OPTIONS`): it reads only
`X-Forwarded-For`, and with both doing it the guard would no longer see the real peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(setting: str | None) -> tuple[Network, ...]:
    """`TRUSTED_PROXIES` -> networks; a bad entry is a ValueError naming it."""
    found = []
    for text in (setting or "").split(","):
        if text.strip():
            try:
                found.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(
                    f"TRUSTED_PROXIES: {text.strip()!r} is not an IP address or CIDR"
                ) from None
    return tuple(found)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None


def is_trusted(host: str | None, trusted: tuple[Network, ...]) -> bool:
    address = _address(host) if host else None
    return address is not None and any(address in net for net in trusted)


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    address = _address(host)
    return address.is_loopback if address is not None else host == "localhost"


def _forwarded_for(value: str) -> list[str]:
    """The `for=` nodes of a `Forwarded` header, in order: `for="[2001:db8::1]:4711"` ->
    `2001:db8::1`; an obfuscated or `unknown` node stays as written (never trusted)."""
    nodes = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, node = pair.strip().partition("=")
            if name.strip().lower() == "for":
                nodes.append(_strip_port(node.strip().strip('"')))
    return nodes


def _forwarded_proto(value: str) -> str | None:
    last = None
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, proto = pair.strip().partition("=")
            if name.strip().lower() == "proto":
                last = proto.strip().strip('"').lower()
    return last


def _strip_port(node: str) -> str:
    if node.startswith("["):
        return node[1:].partition("]")[0]
    return node.partition(":")[0] if node.count(":") == 1 else node


def _client_of(chain: list[str], trusted: tuple[Network, ...]) -> str | None:
    for node in reversed(chain):
        if not is_trusted(node, trusted):
            return node
    return chain[0] if chain else None  # every hop a trusted proxy: the first one


@dataclass(frozen=True)
class Client:
    host: str | None
    scheme: str


def client_of(
    peer: str | None, scheme: str, headers: Mapping[str, str], trusted: tuple[Network, ...]
) -> Client:
    """The client and scheme of a request that came from `peer` with these headers."""
    if not trusted or not is_trusted(peer, trusted):
        return Client(peer, scheme)
    named = []
    if "x-forwarded-for" in headers:
        xff = [_strip_port(n.strip()) for n in headers["x-forwarded-for"].split(",") if n.strip()]
        named.append(_client_of(xff, trusted))
    if "forwarded" in headers:
        named.append(_client_of(_forwarded_for(headers["forwarded"]), trusted))
    candidates = [n for n in named if n]
    remote = [n for n in candidates if not is_loopback(n)]
    host = (remote or candidates or [peer])[0]
    proto = headers.get("x-forwarded-proto", "").rpartition(",")[2].strip().lower()
    if "forwarded" in headers:
        proto = _forwarded_proto(headers["forwarded"]) or proto
    return Client(host, proto if proto in ("http", "https") else scheme)

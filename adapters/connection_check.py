"""Each connection tried once at start, and a failure said in one line: which connection, why.

A wrong CA, an expired certificate or one for another host, a wrong password or a missing ACL
permission is a configuration error: retrying it (as Celery does with a broker it cannot
reach) only hides it. Processes call `check` before they serve (workers and beat from their
init signal, the HTTP door and the CLI before their first command) and stop with the line
`what: cause`, never a URL's password or a secret setting's value in it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterable

import httpx
import psycopg
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError

try:  # the AMQP client is there when kombu is (Celery's broker on RabbitMQ)
    from amqp.exceptions import AccessRefused, NotAllowed
except ImportError:  # pragma: no cover
    AccessRefused = NotAllowed = ()  # type: ignore[assignment,misc]

_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*):[^@\s]*@")


class ConnectionCheckFailed(RuntimeError):
    """A connection refused at start; str() is the one line to print."""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without URL passwords and without any of `secrets`."""
    text = _URL_PASSWORD.sub(r"\1:***@", text)
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


def cause(exc: BaseException) -> str:
    """What went wrong, in a few words, from the most telling exception in the chain."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS: the server's certificate is not trusted ({e.verify_message})"
    for e in chain:
        if isinstance(e, httpx.RemoteProtocolError) and "disconnected" in str(e):
            # TLS 1.3: a server that wants a client certificate hangs up after the handshake.
            return (
                "TLS: the server hung up without answering (does it require a client "
                "certificate? PARTNER_CERT_FILE and PARTNER_KEY_FILE)"
            )
        if isinstance(e, ssl.SSLEOFError) or "CERTIFICATE_REQUIRED" in str(e):
            return "TLS: the server ended the handshake (does it require a client certificate?)"
        if isinstance(e, ssl.SSLError):
            return f"TLS: {e.reason or e}"
        if isinstance(e, AuthenticationError) or "WRONGPASS" in str(e):
            return "authentication refused (wrong user or password, or the user is disabled)"
        if isinstance(e, NoPermissionError) or str(e).startswith("NOPERM"):
            return f"permission refused by the server's ACL ({e})"
        if isinstance(e, AccessRefused):
            return "authentication refused (wrong user or password)"
        if isinstance(e, NotAllowed):
            return f"access refused ({e})"
        if isinstance(e, psycopg.Error):
            first = str(e).strip().splitlines()
            return first[-1] if first else type(e).__name__
    return " ".join(str(exc).split()) or type(exc).__name__


def check(what: str, probe: Callable[[], object], secrets: Iterable[str] = ()) -> None:
    """Run `probe`; on any error raise ConnectionCheckFailed('what: cause')."""
    try:
        probe()
    except Exception as exc:
        raise ConnectionCheckFailed(redact(f"{what}: {cause(exc)}", secrets)) from None


def probe_redis(client: Redis, prefix: str) -> Callable[[], object]:
    """Authenticated, and allowed the product's keys: PING, then a read under KEY_PREFIX."""

    def probe() -> object:
        client.ping()
        return client.exists(f"{prefix}connection-check")

    return probe


def probe_https(url: str, verify: ssl.SSLContext | None) -> Callable[[], object]:
    """One request to an HTTPS partner gateway with the partners' TLS settings: the answer
    does not matter, the handshake (the server's certificate, ours if it asks) does."""

    def probe() -> object:
        with httpx.Client(verify=verify if verify is not None else True, timeout=5) as http:
            return http.get(url).status_code

    return probe


def probe_archive(url: str) -> Callable[[], object]:
    def probe() -> object:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone()

    return probe

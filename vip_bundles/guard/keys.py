"""API keys: `API_KEYS` parsed, a presented key found, a key named without showing it.

`API_KEYS` is a comma-separated list of `key:scopes[@tenant]` (shared/intake-api.md,
"Access" and "Tenants"): `k-...:book+read@shop-a`. In place of the key an entry may give
`sha256:<hex digest>` of it, so that no file or environment holds the key itself. Either way
the door keeps only the digest and compares digests in constant time.

A key is named in logs and in a bundle's history by its fingerprint, `key-` + the first 12 hex
digits of its SHA-256 (the same for a plain key and for its `sha256:` entry); the key itself is
never logged nor echoed in an error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field

from vip_bundles.guard.scopes import SCOPES
from vip_bundles.guard.tenants import TENANT_NAME

MIN_KEY_LENGTH = 32  # characters: guessing a key must be hopeless
DIGEST_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


def digest_of(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def fingerprint(digest: bytes) -> str:
    """`key-` + the first 12 hex digits of the key's SHA-256."""
    return "key-" + digest.hex()[:12]


@dataclass(frozen=True)
class ApiKey:
    digest: bytes = field(repr=False)  # SHA-256 of the key: all the door keeps of it
    scopes: frozenset[str] = frozenset()
    tenant: str | None = None  # None: an operator's key, which sees every bundle

    @classmethod
    def of(cls, key: str, scopes: frozenset[str], tenant: str | None = None) -> ApiKey:
        return cls(digest_of(key.encode()), scopes, tenant)

    @property
    def name(self) -> str:
        return fingerprint(self.digest)


class BadApiKeys(ValueError):
    """`API_KEYS` cannot be used; the message names the entry by position and fingerprint."""


def parse_api_keys(text: str | None) -> list[ApiKey]:
    """`key:scope+scope[@tenant],...` -> keys. A bad entry is `BadApiKeys` naming it by its
    position and fingerprint, never by the key itself."""
    keys = []
    for n, entry in enumerate((text or "").split(","), 1):
        entry = entry.strip()
        if entry:
            keys.append(_parse_entry(n, entry))
    return keys


def _parse_entry(n: int, entry: str) -> ApiKey:
    secret, sep, grant = entry.rpartition(":")
    scopes_text, at, tenant = grant.partition("@")
    scopes = frozenset(s.strip() for s in scopes_text.split("+") if s.strip())
    if secret.startswith(DIGEST_PREFIX):
        hex_digest = secret.removeprefix(DIGEST_PREFIX)
        digest = bytes.fromhex(hex_digest) if _HEX_DIGEST.fullmatch(hex_digest) else None
        name = fingerprint(digest) if digest else "(not a digest)"
    else:
        digest = digest_of(secret.encode()) if secret else None
        name = fingerprint(digest) if digest else "(empty key)"

    def refuse(why: str) -> BadApiKeys:
        return BadApiKeys(f"API_KEYS entry {n} ({name}): {why}")

    if not sep or not secret or not scopes or not scopes <= set(SCOPES):
        raise refuse(
            f"write key:scopes[@tenant] with scopes from {', '.join(SCOPES)} joined by '+'"
        )
    if digest is None:
        raise refuse(f"write {DIGEST_PREFIX} followed by the 64 hex digits of the key's SHA-256")
    if not secret.startswith(DIGEST_PREFIX) and len(secret) < MIN_KEY_LENGTH:
        raise refuse(
            f"a key must be at least {MIN_KEY_LENGTH} characters (e.g. python -c "
            '"import secrets; print(secrets.token_urlsafe(32))")'
        )
    if at and not TENANT_NAME.fullmatch(tenant):
        raise refuse("a tenant is 1-64 letters, digits, '.', '_' or '-', after '@'")
    return ApiKey(digest, scopes, tenant if at else None)


def presented_key(authorization: str | None) -> bytes | None:
    """The key from `Bearer <key>`, or the password of HTTP Basic."""
    if not authorization:
        return None
    kind, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if kind.lower() == "bearer":
        return credentials.encode() or None
    if kind.lower() == "basic":
        try:
            _, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except ValueError:
            return None
        return password if sep and password else None
    return None


def authenticate(presented: bytes | None, keys: list[ApiKey]) -> ApiKey | None:
    """The key presented, its digest compared with every configured one in constant time."""
    if presented is None:
        return None
    digest, found = digest_of(presented), None
    for key in keys:  # no early exit: the time taken says nothing about which key matched
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found

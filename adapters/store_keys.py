"""Where the bundle store keeps what in Redis: one place for every key name.

Everything lives under the `KEY_PREFIX` (default `vip-bundles:`); the broker's queues and the
Celery results do not (they keep the contract's names).
"""

from __future__ import annotations

import hashlib
import re

from process_manager.bundle import Status

# Tombstones of archived bundles are spread over this many hashes, each small enough for
# Redis's compact listpack encoding (hash-max-listpack-entries, 128 by default) up to ~4
# million archived bundles: a few dozen bytes a bundle instead of a key each (~150).
TOMB_BUCKETS = 32768


class BundleKeys:
    """Key names of the bundle store (a mixin of `BundleStore`; needs `self.prefix`)."""

    prefix: str

    def _bundle_key(self, bundle_id: str) -> str:
        return f"{self.prefix}bundle:{bundle_id}"

    def status_key(self, status: Status | str, tenant: str | None = None) -> str:
        """Sorted set of the bundles in `status` (scored by last change, or settle time); with
        `tenant`, only that tenant's (written beside the global one by the transition)."""
        if tenant is not None:
            return f"{self.prefix}tenant:{tenant}:status:{status}"
        return f"{self.prefix}status:{status}"

    @property
    def event_counts_key(self) -> str:
        """Hash: event name -> how many times it was applied (every transition, ever)."""
        return f"{self.prefix}counts:events"

    def moves_key(self, minute: int) -> str:
        """Hash: 'from>to' -> transitions in that minute (epoch minutes), kept MOVES_TTL_S."""
        return f"{self.prefix}counts:moves:{minute}"

    @property
    def archived_counts_key(self) -> str:
        """Hash: final status -> bundles of it moved to the archive (kept by the removal and
        restore scripts), so counts need not ask the archive."""
        return f"{self.prefix}counts:archived"

    @property
    def in_flight_key(self) -> str:
        """Sorted set of bundles neither settled nor parked, scored by creation time."""
        return f"{self.prefix}in-flight"

    def _booking_index(self) -> str:
        return f"{self.prefix}index:booking"

    def _email_index(self, email: str) -> str:
        return f"{self.prefix}index:email:{email.strip().lower()}"

    def _correlation_index(self, correlation_id: str) -> str:
        return f"{self.prefix}index:correlation:{correlation_id}"

    def tomb_key(self, bundle_id: str) -> str:
        """Hash bucket: archived bundle id -> its request digest (adapters/store_retention.py)."""
        bucket = int.from_bytes(hashlib.blake2b(bundle_id.encode(), digest_size=4).digest())
        return f"{self.prefix}tomb:{bucket % TOMB_BUCKETS:x}"

    @staticmethod
    def tomb_field(bundle_id: str) -> bytes:
        """A tombstone's field: the id's 16 bytes when it is a UUID, else the id itself."""
        digits = re.sub("[^0-9a-f]", "", bundle_id.lower())
        return bytes.fromhex(digits) if len(digits) == 32 else bundle_id.encode()

    def _seen_key(self, message_id: str) -> str:
        return f"{self.prefix}seen:{message_id}"

    @property
    def audit_cursor_key(self) -> str:
        return f"{self.prefix}audit:cursor"

"""Where the bundle store keeps what in Redis: one place for every key name.

Everything lives under the `KEY_PREFIX` (default `vip-bundles:`); the broker's queues and the
Celery results do not (they keep the contract's names).
"""

from __future__ import annotations

from process_manager.bundle import Status


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
    def in_flight_key(self) -> str:
        """Sorted set of bundles neither settled nor parked, scored by creation time."""
        return f"{self.prefix}in-flight"

    def _booking_index(self) -> str:
        return f"{self.prefix}index:booking"

    def _email_index(self, email: str) -> str:
        return f"{self.prefix}index:email:{email.strip().lower()}"

    def _correlation_index(self, correlation_id: str) -> str:
        return f"{self.prefix}index:correlation:{correlation_id}"

    def _seen_key(self, message_id: str) -> str:
        return f"{self.prefix}seen:{message_id}"

    @property
    def audit_cursor_key(self) -> str:
        return f"{self.prefix}audit:cursor"

"""What a partner call can end in besides success: one family, so callers catch by meaning."""

from __future__ import annotations


class PartnerError(Exception):
    """Anything a partner call can end in besides success."""


class BusinessRefusal(PartnerError):
    """The partner said no for a business reason (409): retrying cannot help."""


class ShowSoldOut(BusinessRefusal):
    pass


class NoFlightTicketsAvailable(BusinessRefusal):
    pass


class PartnerUnavailable(PartnerError):
    """5xx, timeouts or connection errors on every try: the outcome of the call is unknown."""

    def __init__(self, message: str, partner: str | None = None) -> None:
        super().__init__(message)
        self.partner = partner  # its path prefix, as PARTNER_RATE_LIMITS names it


class PartnerProtocolError(PartnerError):
    """An answer outside the contract (an unexpected status or body): not retried."""


class PartnerBusy(PartnerError):
    """The partner may not be called now (its `Retry-After`, its open circuit or the fleet's
    quota): nothing was processed, the call is to be made again, same key, after `wait_s`.

    Never a failure of the step: the caller defers it (a scheduled message, not a sleeping
    thread) and burns no attempt.
    """

    def __init__(
        self, partner: str, wait_s: float, reason: str, maybe_processed: bool = False
    ) -> None:
        super().__init__(f"{partner}: not before {wait_s:.2f} s ({reason})")
        self.partner = partner
        self.wait_s = wait_s
        self.reason = reason  # "retry_after", "open", "half_open" or "quota"
        # An earlier try of the same call failed without an answer (or a 503 came): the
        # partner may have acted on it, so the step stays "started" (in doubt if undone).
        self.maybe_processed = maybe_processed

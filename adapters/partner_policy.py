"""How every partner call is made: one policy, composed once per client, the same for all calls.

Before each try the fleet's gate (adapters/partner_gate.py) is asked "may I call now?". When it
says "not yet" (a `Retry-After`, an open circuit, the quota) the call is not made: `PartnerBusy`
tells the caller when to come back, and the caller defers the step (a scheduled message, not a
sleeping thread). A 429, or a 503 with `Retry-After`, was not processed: it sets the fleet's
"not before" and ends the call the same way; it is never a refusal and never a failed attempt.

Transient faults (5xx, timeouts, connection errors) are retried in-process with tenacity:
capped exponential backoff with jitter, the same idempotency key on every try, each try asking
the gate again (so once the circuit opens, the retries stop). A 4xx is never retried.

Every call has a total deadline across its tries: no try starts, and no wait begins, that would
end past it, and each try's timeouts are cut to the time left. So a partner that hangs ends a
step within `deadline_s` by the client alone: Celery's `task_time_limit` is not enforced on a
`-P threads` (or gevent) pool, and must not be what bounds a step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from adapters.metrics import METER, Meter, partner_of
from adapters.partner_errors import PartnerBusy, PartnerUnavailable
from adapters.partner_gate import Admission, PartnerGate, parse_retry_after

log = logging.getLogger(__name__)


class _Transient(Exception):
    pass


@dataclass(frozen=True)
class RetryAfterPolicy:
    """What a `Retry-After` that is missing or malformed (or negative) means, and the most
    any value is believed (a partner answering "come back in a day" is capped, and logged)."""

    default_s: float = 1.0
    max_s: float = 300.0


@dataclass
class CallPolicy:
    timeout_s: float = 5.0
    attempts: int = 5
    max_wait_s: float = 2.0
    deadline_s: float | None = None  # default: every try its full timeout and wait
    gate: PartnerGate | None = None  # None: no fleet view (a 429 still ends the call busy)
    undo: bool = False  # undo calls go before new bookings when a quota is scarce
    retry_after: RetryAfterPolicy = RetryAfterPolicy()
    meter: Meter = METER

    def __post_init__(self) -> None:
        self.deadline_s = self.deadline_s or self.attempts * (self.timeout_s + self.max_wait_s)

    def call(
        self,
        method: str,
        path: str,
        try_once: Callable[[float], httpx.Response],
        admitted: Admission | None = None,
    ) -> httpx.Response:
        """Run `try_once(timeout)` under the policy; the response of the first try that was
        answered (any status but 5xx and 429). Raises `PartnerBusy` or `PartnerUnavailable`.
        `admitted`: the gate's answer for the first try, when the caller asked it already."""
        assert self.deadline_s is not None
        partner = path.strip("/").split("/", 1)[0]  # the prefix PARTNER_RATE_LIMITS names
        label = partner_of(path)
        started = time.monotonic()
        deadline = started + self.deadline_s
        retrying = Retrying(
            # Out of tries, or the next wait would end past the deadline.
            stop=stop_after_attempt(self.attempts) | stop_before_delay(self.deadline_s),
            # 50 ms, 100 ms, 200 ms ... capped, plus up to 100 ms of jitter so that callers
            # failing together do not retry together.
            wait=wait_exponential_jitter(multiplier=0.05, jitter=0.1, max=self.max_wait_s),
            retry=retry_if_exception_type((_Transient, httpx.TransportError)),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    given, admitted = admitted, None  # the first try's only
                    try:
                        return self._try(method, path, partner, label, deadline, try_once, given)
                    except PartnerBusy as busy:
                        # Only transient failures are retried: a try before this one failed
                        # without an answer.
                        busy.maybe_processed |= attempt.retry_state.attempt_number > 1
                        raise
        except (_Transient, httpx.TransportError) as exc:
            self.meter.partner_call(label, "gave_up")
            tries = retrying.statistics.get("attempt_number", self.attempts)
            raise PartnerUnavailable(
                f"{method} {path}: failed {tries} times in {time.monotonic() - started:.1f} s "
                f"(deadline {self.deadline_s:g} s), last: {exc!r}",
                partner,
            ) from None
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    def _try(
        self,
        method: str,
        path: str,
        partner: str,
        label: str,
        deadline: float,
        try_once: Callable[[float], httpx.Response],
        admitted: Admission | None = None,
    ) -> httpx.Response:
        gate = self.gate
        admission = admitted
        if admission is None and gate is not None:
            admission = gate.acquire(partner, undo=self.undo)
        if admission is not None and admission.wait_s > 0:
            self.meter.partner_call(label, "deferred")  # not made: no failure, no attempt
            raise PartnerBusy(partner, admission.wait_s, admission.reason)
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpx.TimeoutException(f"deadline of {self.deadline_s} s passed")
            response = try_once(min(self.timeout_s, left))
        except httpx.TransportError:
            self._failed(partner, label)
            raise
        status = response.status_code
        if status == 429 or (status == 503 and "retry-after" in response.headers):
            raise self._busy(method, path, partner, label, response)
        if status >= 500:
            self._failed(partner, label)
            raise _Transient(f"{method} {path}: {status}")
        if gate is not None and admission is not None and not admission.clear:
            gate.report(partner, "ok")  # closes the circuit after a probe, clears the count
        return response

    def _failed(self, partner: str, label: str) -> None:
        self.meter.partner_call(label, "transient")  # one failed try
        if self.gate is not None:
            self.gate.report(partner, "fail")

    def _busy(
        self, method: str, path: str, partner: str, label: str, response: httpx.Response
    ) -> PartnerBusy:
        """A 429 (or a 503 with `Retry-After`): not processed; the whole fleet waits."""
        status = response.status_code
        wait_s, note = parse_retry_after(
            response.headers.get("retry-after"),
            default_s=self.retry_after.default_s,
            max_s=self.retry_after.max_s,
        )
        if note is not None:
            log.warning("%s %s answered %d: %s; waiting %g s", method, path, status, note, wait_s)
        throttled = status == 429
        self.meter.partner_call(label, "throttled" if throttled else "transient")
        if self.gate is not None:
            self.gate.report(partner, "throttled" if throttled else "fail", wait_s)
        return PartnerBusy(partner, wait_s, "retry_after", maybe_processed=not throttled)

"""The partners' back-pressure as operators see it (`GET /metrics`, the console, `vip-bundles
stats`): each partner's circuit and Retry-After as the fleet's gate holds them
(adapters/partner_gate.py), the steps waiting on it (adapters/deferred.py), and the workers'
sums of its calls (429s and calls not made among them) and of the waits they caused.

`queue_reads` adds its commands to the caller's pipeline and `snapshots` reads their replies,
so that `/metrics` stays one round trip per scrape however many partners there are. Seconds
left are computed on the Redis server's clock (`TIME` in the same pipeline): the gate wrote
them on that clock, and a host's clock may disagree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis import Redis
from redis.client import Pipeline

from adapters.deferred import KINDS, DeferredSteps
from adapters.partner_gate import PARTNER_PREFIXES, STATES, PartnerGate

# The label every partner metric uses, by the partner's path prefix.
PARTNER_OF_PATH = {
    "dead-nation-api": "shows",
    "transportation-api": "flights",
    "payments-api": "payments",
    "receipts-api": "receipts",
}
# throttled: answered 429 (not processed); deferred: not made, the fleet's partner gate said
# "not yet" (Retry-After, open circuit, quota): the step waits as a scheduled message.
OUTCOMES = ("ok", "refused", "transient", "gave_up", "throttled", "deferred")
# Why a step waited (Meter.partner_wait): every reason is served, at 0 until it happens, so
# that an alert's ratio or increase() has a series from the start.
WAIT_REASONS = ("retry_after", "open", "half_open", "quota")
CIRCUIT_VALUE = {state: n for n, state in enumerate(STATES)}  # closed 0, half_open 1, open 2


@dataclass(frozen=True)
class PartnerSnapshot:
    """One partner as the fleet sees it at one instant."""

    partner: str  # the metrics label: shows, flights, payments, receipts
    path: str  # its path prefix: dead-nation-api, ...
    circuit: str  # closed, half_open or open
    retry_after_s: float  # left of the latest Retry-After any process received (0: none)
    open_s: float  # how long the circuit has not been closed (0 when closed)
    failures: int  # transient failures in a row, fleet-wide
    deferred: Mapping[str, int]  # kind (undo, forward) -> bundles whose next step waits on it
    calls: Mapping[str, float]  # outcome -> calls (OUTCOMES), since the sums began
    waits: Mapping[str, float]  # reason -> steps deferred (WAIT_REASONS)
    wait_s: float  # seconds those steps were told to wait, added up

    def as_dict(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "path": self.path,
            "circuit": self.circuit,
            "retry_after_s": round(self.retry_after_s, 3),
            "open_s": round(self.open_s, 3),
            "failures": self.failures,
            "deferred": dict(self.deferred),
            "throttled": int(self.calls.get("throttled", 0)),
            "not_called": int(self.calls.get("deferred", 0)),
            "waits": int(sum(self.waits.values())),
            "waits_by_reason": {r: int(n) for r, n in self.waits.items()},
            "wait_s": round(self.wait_s, 3),
        }


def queue_reads(pipe: Pipeline, redis: Redis, prefix: str) -> int:
    """Add the partners' reads to `pipe` (of `redis`); how many replies `snapshots` takes."""
    # The gate and the delayed queue name their own keys (no I/O: scripts load when run).
    gate, deferred = PartnerGate(redis, prefix), DeferredSteps(redis, prefix)
    pipe.time()
    for path in PARTNER_PREFIXES:
        pipe.hgetall(gate.key(path))
    for path in PARTNER_PREFIXES:
        for kind in KINDS:
            pipe.zcard(deferred.key(path, kind))
    return 1 + len(PARTNER_PREFIXES) * (1 + len(KINDS))


def snapshots(replies: Sequence[Any], sums: Mapping[str, float]) -> list[PartnerSnapshot]:
    """The partners from `queue_reads`' replies and the workers' sums (the metrics hash)."""
    (seconds, micros), rest = replies[0], list(replies[1:])
    now = int(seconds) + int(micros) / 1_000_000
    hashes = [{_text(k): _text(v) for k, v in h.items()} for h in rest[: len(PARTNER_PREFIXES)]]
    sizes = iter(int(n) for n in rest[len(PARTNER_PREFIXES) :])
    out = []
    for path, h in zip(PARTNER_PREFIXES, hashes, strict=True):
        label = PARTNER_OF_PATH[path]
        circuit = h.get("state") or "closed"
        opened_at = _number(h.get("opened_at"))
        out.append(
            PartnerSnapshot(
                partner=label,
                path=path,
                circuit=circuit,
                retry_after_s=max(_number(h.get("not_before")) - now, 0.0),
                open_s=max(now - opened_at, 0.0) if circuit != "closed" and opened_at else 0.0,
                failures=int(_number(h.get("failures"))),
                deferred={kind: next(sizes) for kind in KINDS},
                calls={o: sums.get(f"partner_calls|{label}|{o}", 0.0) for o in OUTCOMES},
                waits={r: sums.get(f"partner_waits|{label}|{r}", 0.0) for r in _reasons(sums)},
                wait_s=sums.get(f"partner_wait_sum|{label}", 0.0),
            )
        )
    return out


def families(partners: Sequence[PartnerSnapshot], sums: Mapping[str, float]) -> Iterator[Metric]:
    """The partner metric families of `/metrics`."""
    yield _calls(sums)
    circuit = GaugeMetricFamily(
        "vip_bundles_partner_circuit_state",
        "The fleet's circuit breaker for the partner: 0 closed, 1 half_open (one probe call "
        "per interval), 2 open (no call)",
        labels=["partner"],
    )
    retry_after = GaugeMetricFamily(
        "vip_bundles_partner_retry_after_seconds",
        "Seconds left before the partner may be called again, from the latest Retry-After any "
        "process received (0: none)",
        labels=["partner"],
    )
    deferred = GaugeMetricFamily(
        "vip_bundles_deferred_steps",
        "Bundles whose next step waits on the partner (kind: undo or forward)",
        labels=["partner", "kind"],
    )
    waits = CounterMetricFamily(
        "vip_bundles_partner_waits",
        "Steps deferred because the partner was not due (reason: retry_after, open, half_open, "
        "quota)",
        labels=["partner", "reason"],
    )
    wait_seconds = CounterMetricFamily(
        "vip_bundles_partner_wait_seconds",
        "Seconds deferred steps were told to wait for the partner, added up",
        labels=["partner"],
    )
    for p in partners:
        circuit.add_metric([p.partner], CIRCUIT_VALUE.get(p.circuit, CIRCUIT_VALUE["open"]))
        retry_after.add_metric([p.partner], p.retry_after_s)
        for kind, n in p.deferred.items():
            deferred.add_metric([p.partner, kind], n)
        for reason, n in p.waits.items():
            waits.add_metric([p.partner, reason], n)
        wait_seconds.add_metric([p.partner], p.wait_s)
    yield from (circuit, retry_after, deferred, waits, wait_seconds)


def _calls(sums: Mapping[str, float]) -> Metric:
    calls = CounterMetricFamily(
        "vip_bundles_partner_calls",
        "Partner HTTP calls by outcome (transient: one failed try; gave_up: all tries failed; "
        "throttled: answered 429; deferred: not made, the partner was not due)",
        labels=["partner", "outcome"],
    )
    partners = sorted(
        {*PARTNER_OF_PATH.values()}
        | {f.split("|")[1] for f in sums if f.startswith("partner_calls|")}
    )
    for partner in partners:
        for outcome in OUTCOMES:
            calls.add_metric([partner, outcome], sums.get(f"partner_calls|{partner}|{outcome}", 0))
    return calls


def _reasons(sums: Iterable[str]) -> list[str]:
    seen = {f.split("|")[2] for f in sums if f.startswith("partner_waits|")}
    return [*WAIT_REASONS, *sorted(seen - set(WAIT_REASONS))]


def _number(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:  # a hand-edited hash must not break a scrape
        return 0.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""The tables, the saga/baseline ratios and the targets, for the terminal and as JSON.

Sections run in rounds (baseline, success, rollback; again and again), and each ratio is taken
within a round, then the median over rounds: on a shared machine the load drifts by tens of
percent within a minute, and comparing neighbours cancels most of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.sections import Section, percentile

# The targets.
MIN_THROUGHPUT_RATIO = 0.9  # saga bundles/s over baseline chains/s
MAX_ROLLBACK_P99_RATIO = 1.5  # compensation p99 over the baseline chain's p99, one at a time
# "No growth" from the small to the large store: counts may not grow; timings, taken relative
# to the baseline of the same round, may move only within a shared machine's noise.
MAX_COMMANDS_GROWTH = 1.05
MAX_REDIS_TIME_GROWTH = 1.25
MIN_SCALE_THROUGHPUT = 0.85

KINDS = {
    "baseline": "baseline chain",
    "floor": "floor (the design, no saga code)",
    "success": "saga success",
    "rollback": "saga rollback (return sold out)",
    "baseline_light": "baseline chain, one at a time",
    "success_light": "saga success, one at a time",
    "rollback_light": "saga rollback, one at a time",
    "baseline_large": "baseline chain",
    "success_large": "saga success",
}
CPU = ("worker", "simulator", "redis", "driver")
HEAD = (
    f"{'section':<36} {'flows':>5} {'flows/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cmds':>6} "
    f"{'redis us':>8} {'cpu ms':>6} {'bytes':>6}  cpu share: worker(main)/sim/redis/driver"
)
NOTE = """\
latency: baseline send -> last task done; success send_task(vip_bundle.book) -> finalized
  (floor: send_task(bench.floor.book) -> its finalized event, to the millisecond);
  rollback 409 (FlightBookingFailed_v1) -> failed, i.e. the compensation alone.
flows/s: median over rounds; p50/p99: over every flow of the rounds. cmds, redis us, cpu ms:
  per flow (Redis commands, Redis server time, CPU of worker+simulator+Redis+driver).
bytes: kept in Redis per bundle (document, index entry, stream entries, Celery results)."""


def cpu_ms(s: Section) -> float:
    return 1000 * sum(s.cost.cpu_s[k] for k in CPU) / s.flows


def worker_cpu_ms(s: Section) -> float:
    return 1000 * s.cost.cpu_s["worker"] / s.flows


def _shares(sections: list[Section]) -> str:
    def share(key: str) -> float:
        return statistics.mean(s.cost.cpu_s[key] / s.cost.wall_s for s in sections)

    parts = "/".join(f"{share(k):.2f}" for k in CPU[1:])
    return f"{share('worker'):.2f}({share('worker_main'):.2f})/{parts}"


def row(name: str, sections: list[Section]) -> str:
    """One line: median throughput, latency pooled over the sections, mean costs."""
    pooled = [ms for s in sections for ms in s.latency_ms]
    flows = sum(s.flows for s in sections)
    commands = sum(sum(s.cost.commands.values()) for s in sections) / flows
    usec = sum(s.cost.redis_usec for s in sections) / flows
    kept = [s.bytes_per_flow["total"] for s in sections if s.bytes_per_flow]
    size = f"{statistics.mean(kept):6.0f}" if kept else f"{'-':>6}"
    throughput = statistics.median(s.throughput for s in sections)
    return (
        f"{name:<36} {flows:>5} {throughput:>7.1f} {percentile(pooled, 50):>7.1f} "
        f"{percentile(pooled, 99):>7.1f} {commands:>6.1f} {usec:>8.0f} "
        f"{statistics.mean(map(cpu_ms, sections)):>6.1f} {size}  {_shares(sections)}"
    )


def table(rows: list[tuple[str, list[Section]]]) -> str:
    return "\n".join([HEAD, "-" * len(HEAD), *(row(n, s) for n, s in rows if s), NOTE])


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": [round(v, 3) for v in values],
    }


def _per_round(
    top: list[Section], bottom: list[Section], of: Callable[[Section], float]
) -> dict[str, Any]:
    return _spread([of(a) / of(b) for a, b in zip(top, bottom, strict=True)])


def _throughput(s: Section) -> float:
    return s.throughput


def _p99(s: Section) -> float:
    return s.p(99)


def _commands(s: Section) -> float:
    return s.cost.commands_per_flow()


def _usec(s: Section) -> float:
    return s.cost.redis_usec / s.flows


def _mean_ratio(top: list[Section], bottom: list[Section], of: Callable[[Section], float]) -> float:
    return round(statistics.mean(map(of, top)) / statistics.mean(map(of, bottom)), 3)


def ratios(k: dict[str, list[Section]]) -> dict[str, Any]:
    base, success, rollback = k["baseline"], k["success"], k["rollback"]
    out: dict[str, Any] = {
        "throughput_saga_over_baseline": _per_round(success, base, _throughput),
        # The best any implementation of the design could do here (bench/floor_tasks.py), and
        # what the saga's own code costs on top of it.
        "throughput_floor_over_baseline": _per_round(k["floor"], base, _throughput),
        "throughput_saga_over_floor": _per_round(success, k["floor"], _throughput),
        "rollback_throughput_over_baseline": _per_round(rollback, base, _throughput),
        "rollback_p99_over_baseline_p99_one_at_a_time": _per_round(
            k["rollback_light"], k["baseline_light"], _p99
        ),
        "rollback_p99_over_baseline_p99_under_load": _per_round(rollback, base, _p99),
        "success_p99_over_baseline_p99_one_at_a_time": _per_round(
            k["success_light"], k["baseline_light"], _p99
        ),
        "success_p99_over_baseline_p99_under_load": _per_round(success, base, _p99),
        "cpu_per_flow_saga_over_baseline": _per_round(success, base, cpu_ms),
        # The worker alone: what a deployment scales, with callers, Redis and partners elsewhere.
        "worker_cpu_per_flow_saga_over_baseline": _per_round(success, base, worker_cpu_ms),
        "commands_saga_over_baseline": _mean_ratio(success, base, _commands),
        "redis_usec_saga_over_baseline": _mean_ratio(success, base, _usec),
    }
    base_l, large = k["baseline_large"], k["success_large"]

    def relative(saga: list[Section], ref: list[Section], of: Callable[[Section], float]) -> float:
        return statistics.median(of(a) / of(b) for a, b in zip(saga, ref, strict=True))

    scale = {
        "throughput_relative_to_baseline": round(
            relative(large, base_l, _throughput) / relative(success, base, _throughput), 3
        ),
        "redis_usec_relative_to_baseline": round(
            relative(large, base_l, _usec) / relative(success, base, _usec), 3
        ),
        "p99_relative_to_baseline": round(
            relative(large, base_l, _p99) / relative(success, base, _p99), 3
        ),
        "commands_per_bundle": _mean_ratio(large, success, _commands),
        "throughput_raw": _mean_ratio(large, success, _throughput),
        "p99_raw": round(
            percentile([ms for s in large for ms in s.latency_ms], 99)
            / percentile([ms for s in success for ms in s.latency_ms], 99),
            3,
        ),
    }
    out["scale_large_over_small"] = scale
    light = out["rollback_p99_over_baseline_p99_one_at_a_time"]["median"]
    out["targets"] = {
        f"saga throughput >= {MIN_THROUGHPUT_RATIO}x baseline": out[
            "throughput_saga_over_baseline"
        ]["median"]
        >= MIN_THROUGHPUT_RATIO,
        f"rollback p99 <= {MAX_ROLLBACK_P99_RATIO}x baseline p99, one flow at a time": light
        <= MAX_ROLLBACK_P99_RATIO,
        "no growth from small to large store": scale["commands_per_bundle"] <= MAX_COMMANDS_GROWTH
        and scale["redis_usec_relative_to_baseline"] <= MAX_REDIS_TIME_GROWTH
        and scale["throughput_relative_to_baseline"] >= MIN_SCALE_THROUGHPUT,
    }
    return out


def text(ratio: dict[str, Any]) -> str:
    def spread(key: str) -> str:
        r = ratio[key]
        return f"{r['median']:.2f}x (rounds {', '.join(f'{v:.2f}' for v in r['rounds'])})"

    lines = [
        f"{key.replace('_', ' '):<48} {spread(key)}"
        for key, value in ratio.items()
        if isinstance(value, dict) and "median" in value
    ]
    lines += [
        f"{'commands saga over baseline':<48} {ratio['commands_saga_over_baseline']:.2f}x",
        f"{'redis usec saga over baseline':<48} {ratio['redis_usec_saga_over_baseline']:.2f}x",
        "large/small store: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratio["scale_large_over_small"].items()),
    ]
    lines += [f"[{'PASS' if ok else 'MISS'}] {name}" for name, ok in ratio["targets"].items()]
    return "\n".join(lines)


def commands(rows: list[tuple[str, list[Section]]]) -> str:
    lines = ["Redis commands per flow by name (commands run by Lua scripts included):"]
    for name, sections in rows:
        if sections:
            s = sections[0]
            top = ", ".join(f"{c} {v:g}" for c, v in s.cost.top_commands(16).items())
            inside = s.extra.get("transition_script_commands_per_flow")
            note = f" [{inside:g} by the transition script]" if inside else ""
            lines.append(f"  {name}: {top}{note}")
    return "\n".join(lines)


def simulator(rows: list[tuple[str, list[Section]]]) -> str:
    lines = ["Simulator (its own process): requests/s, requests/flow, CPU share, probe ms:"]
    for name, sections in rows:
        for s in sections[:1]:
            sim = s.cost.as_dict()["simulator"]
            lines.append(
                f"  {name}: {sim['requests_per_s']:.0f} req/s, {sim['requests_per_flow']:g}/flow, "
                f"cpu {sim['cpu_share']:.2f}, probe p50 {sim['probe_ms_p50']} ms, "
                f"max {sim['probe_ms_max']} ms"
            )
    return "\n".join(lines)

"""A capacity configuration's summary (ratios, CPU per bundle, what saturates) and the table.

What saturates is read from the saga's sections, in this order:
- **CPU**: the machine's cores >= 90% busy (every process on it, the run's and anyone else's);
- **CPU of one process** (threads pools): a worker process using >= 0.85 of a core, the most
  one Python process gets for its bytecode (the GIL), however many threads it runs;
- **Redis**, the **simulator** (the partners) or the **driver** (the callers): >= 0.85 of a core
  (the simulator also when its health probe's median passes 20 ms);
- **pool**: messages wait in the broker (mean >= 1 queued) with none of the above: every slot
  is taken, mostly waiting for partners;
- **not saturated**: none of these; the closed loop's window, not the host, set the rate.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from bench.stack import Shape

CORES = os.cpu_count() or 1
RUN = ("worker", "simulator", "redis", "driver")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _per_flow_ms(s: dict[str, Any], *keys: str) -> float:
    return 1000 * sum(s["cpu_s"][k] for k in keys) / s["flows"]


def _share(s: dict[str, Any], key: str) -> float:
    return float(s["cpu_s"][key] / s["wall_s"])


def saturation(s: dict[str, Any], shape: dict[str, Any]) -> str:
    """What limited one section (see the module docstring)."""
    per_process = _share(s, "worker") / shape["processes"]
    if s["machine_busy"] >= 0.9:
        return "CPU"
    if shape["pool"] != "prefork" and per_process >= 0.85:
        return "CPU of one process (GIL)"
    for key, name in (("redis", "Redis"), ("simulator", "partners"), ("driver", "driver")):
        if _share(s, key) >= 0.85:
            return name
    if (s["simulator"]["probe_ms_p50"] or 0) > 20:
        return "partners"
    if s["queued_mean"] >= 1:
        return "pool"
    return "not saturated"


def configuration(out: dict[str, Any]) -> dict[str, Any]:
    """The figures the table and docs/performance.md show, from one configuration's rounds."""
    sections = out.get("sections", {})
    chain, saga = sections.get("chain", []), sections.get("saga", [])
    if not chain or not saga:
        return {"error": out.get("error", "no rounds")}
    shape = out["shape"]
    saga_cpu = statistics.mean(_per_flow_ms(s, "worker") for s in saga)
    summary: dict[str, Any] = {
        "chain_per_s": _median([s["throughput"] for s in chain]),
        "saga_per_s": _median([s["throughput"] for s in saga]),
        "saga_over_chain": [
            s["throughput"] / c["throughput"] for s, c in zip(saga, chain, strict=True)
        ],
        "chain_p50_ms": _median([s["p50_ms"] for s in chain]),
        "chain_p99_ms": _median([s["p99_ms"] for s in chain]),
        "saga_p50_ms": _median([s["p50_ms"] for s in saga]),
        "saga_p99_ms": _median([s["p99_ms"] for s in saga]),
        "p99_saga_over_chain": [
            s["p99_ms"] / c["p99_ms"] for s, c in zip(saga, chain, strict=True)
        ],
        "worker_cpu_ms_chain": statistics.mean(_per_flow_ms(s, "worker") for s in chain),
        "worker_cpu_ms_saga": saga_cpu,
        "run_cpu_ms_chain": statistics.mean(_per_flow_ms(s, *RUN) for s in chain),
        "run_cpu_ms_saga": statistics.mean(_per_flow_ms(s, *RUN) for s in saga),
        "worker_cores_saga": statistics.mean(_share(s, "worker") for s in saga),
        "machine_busy_saga": statistics.mean(s["machine_busy"] for s in saga),
        "queued_saga": statistics.mean(s["queued_mean"] for s in saga),
        # Little's law: bundles in the system on average (the window bounds it).
        "in_flight_saga": statistics.mean(s["throughput"] * s["mean_ms"] / 1000 for s in saga),
        "simulator_cpu_max": max(s["simulator"]["cpu_share"] for s in chain + saga),
        "simulator_probe_p50_max_ms": max(
            s["simulator"]["probe_ms_p50"] or 0 for s in chain + saga
        ),
        # What the pool alone allows: each slot holds a bundle for its three partner calls
        # and the workers' CPU of its four tasks.
        "pool_limit_per_s": shape["processes"]
        * shape["concurrency"]
        / (3 * out["latency_ms"] / 1000 + saga_cpu / 1000),
        "saturates": [saturation(s, shape) for s in saga],
        "loadavg": [s["loadavg"][0] for s in saga],
    }
    summary["saga_over_chain_median"] = _median(summary["saga_over_chain"])
    summary["p99_ratio_median"] = _median(summary["p99_saga_over_chain"])
    light, back = sections.get("chain_light", []), sections.get("rollback_light", [])
    if light and back:
        summary["rollback_p99_over_chain_p99_one_at_a_time"] = [
            b["p99_ms"] / c["p99_ms"] for b, c in zip(back, light, strict=True)
        ]
        summary["chain_light_p99_ms"] = _median([c["p99_ms"] for c in light])
        summary["rollback_light_p99_ms"] = _median([b["p99_ms"] for b in back])
    return summary


HEAD = (
    f"{'partner':>8} {'shape':<38} {'win':>4} {'chain/s':>8} {'saga/s':>7} {'ratio':>6} "
    f"{'rounds':<16} {'p99 chain':>9} {'p99 saga':>8} {'p99 x':>5} {'cpu ms c/s':>11} "
    f"{'run ms c/s':>11} {'wrk cores':>9} {'busy':>5} {'queued':>6} {'in flight':>9} {'cal':>4}"
    "  saturates"
)


def shape_label(shape: dict[str, Any], code: str = "") -> str:
    """A configuration's workers (its JSON's `shape`), as `Shape.label` says them."""
    return Shape(**shape).label(code)


def row(c: dict[str, Any]) -> str:
    s, shape = c["summary"], c["shape"]
    label = shape_label(shape)
    latency = f"{c['latency_ms']}+-{c['jitter_ms']}"
    if "error" in s:
        return f"{latency:>8} {label:<38} {c['window']:>4} ERROR {s['error']}"
    rounds = ",".join(f"{x:.2f}" for x in s["saga_over_chain"])
    verdicts = sorted(set(s["saturates"]), key=s["saturates"].count, reverse=True)
    return (
        f"{latency:>8} {label:<38} {c['window']:>4} {s['chain_per_s']:>8.1f} "
        f"{s['saga_per_s']:>7.1f} {s['saga_over_chain_median']:>6.2f} {rounds:<16} "
        f"{s['chain_p99_ms']:>9.0f} {s['saga_p99_ms']:>8.0f} {s['p99_ratio_median']:>5.2f} "
        f"{s['worker_cpu_ms_chain']:>5.1f}/{s['worker_cpu_ms_saga']:<5.1f} "
        f"{s['run_cpu_ms_chain']:>5.1f}/{s['run_cpu_ms_saga']:<5.1f} "
        f"{s['worker_cores_saga']:>9.2f} {s['machine_busy_saga']:>5.2f} "
        f"{s['queued_saga']:>6.1f} {s['in_flight_saga']:>9.1f} "
        f"{c.get('calibration_cpu_s', 0):>4.2f}  {' / '.join(verdicts)}"
    )


NOTE = """\
partner: the simulator's latency +- jitter, ms. win: flows kept in flight (closed loop).
chain/s, saga/s: median of rounds; ratio: saga / chain, median of the rounds' ratios.
p99: send -> finished, ms, median of rounds; p99 x: saga / chain. cpu ms: per flow, the
workers alone (chain/saga); run ms: workers + Redis + simulator + driver. wrk cores: cores
the workers used (saga). busy: share of the machine's cores busy (everyone's). queued:
messages waiting in the broker (mean). in flight: bundles in the system (Little's law).
cal: CPU seconds of a fixed loop when the configuration started (higher: slower cores)."""


def table(configurations: list[dict[str, Any]], note: bool = True) -> str:
    lines = [HEAD, "-" * len(HEAD), *(row(c) for c in configurations)]
    if not note:
        return "\n".join(lines)
    extra = []
    for c in configurations:
        s, where = c["summary"], f"  {c['latency_ms']} ms, {shape_label(c['shape'])}:"
        if "rollback_p99_over_chain_p99_one_at_a_time" in s:
            ratios = ", ".join(f"{x:.2f}" for x in s["rollback_p99_over_chain_p99_one_at_a_time"])
            extra.append(
                f"{where} rollback p99 {s['rollback_light_p99_ms']:.0f} ms "
                f"/ chain p99 {s['chain_light_p99_ms']:.0f} ms, one at a time (rounds {ratios})"
            )
        if "simulator_cpu_max" in s:
            extra.append(
                f"{where} simulator at most {s['simulator_cpu_max']:.2f} "
                f"of a core, probe p50 at most {s['simulator_probe_p50_max_ms']:.1f} ms; "
                f"pool limit ~{s['pool_limit_per_s']:.0f}/s"
            )
    return "\n".join([*lines, NOTE, *extra])


MARKDOWN_HEAD = (
    "| workers | window | chain/s | saga/s | saga / chain (rounds) | p50 ms chain / saga "
    "| p99 ms chain / saga | p99 saga / chain | worker CPU ms / bundle, chain / saga "
    "| whole run CPU ms, chain / saga | workers' cores | machine busy | queued | in flight "
    "| saturates |\n"
    "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | --- |"
)


def markdown(configurations: list[dict[str, Any]]) -> str:
    """docs/performance.md's tables: one per partner latency, a row per configuration."""
    out = []
    for latency in sorted({c["latency_ms"] for c in configurations}):
        rows = [c for c in configurations if c["latency_ms"] == latency]
        out += [f"**Partners at {latency} ms +- {rows[0]['jitter_ms']} ms**:", "", MARKDOWN_HEAD]
        for c in rows:
            s, label = c["summary"], shape_label(c["shape"], code="`")
            if "error" in s:
                out.append(f"| {label} | {c['window']} | error: {s['error']} |")
                continue
            rounds = ", ".join(f"{x:.2f}" for x in s["saga_over_chain"])
            verdicts = sorted(set(s["saturates"]), key=s["saturates"].count, reverse=True)
            out.append(
                f"| {label} | {c['window']} | {s['chain_per_s']:.1f} | {s['saga_per_s']:.1f} "
                f"| {s['saga_over_chain_median']:.2f} ({rounds}) "
                f"| {s['chain_p50_ms']:.0f} / {s['saga_p50_ms']:.0f} "
                f"| {s['chain_p99_ms']:.0f} / {s['saga_p99_ms']:.0f} "
                f"| {s['p99_ratio_median']:.2f} "
                f"| {s['worker_cpu_ms_chain']:.1f} / {s['worker_cpu_ms_saga']:.1f} "
                f"| {s['run_cpu_ms_chain']:.1f} / {s['run_cpu_ms_saga']:.1f} "
                f"| {s['worker_cores_saga']:.2f} | {s['machine_busy_saga']:.2f} "
                f"| {s['queued_saga']:.0f} | {s['in_flight_saga']:.0f} | {' / '.join(verdicts)} |"
            )
        out.append("")
    return "\n".join(out)

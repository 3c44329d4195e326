"""The benchmark still runs end to end (`python -m bench --quick`), so it cannot rot.

No timing is asserted: only that every section ran, finished its flows and was reported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import missing
from vip_bundles import local_stack

SECTIONS = {
    "baseline",
    "floor",
    "success",
    "rollback",
    "baseline_light",
    "success_light",
    "rollback_light",
    "baseline_large",
    "success_large",
}


def run_bench(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` in its own process, as a user runs it (it claims its own database and
    starts its own worker); skipped without a Redis (failed in CI)."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not local_stack.redis_answers(url):
        missing(f"no Redis at {url}")
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=local_stack.ROOT,
        env=local_stack.celery_env(REDIS_URL=url, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.timeout(600)
def test_quick_benchmark_reports_every_section(tmp_path: Path):
    out = tmp_path / "bench.json"
    done = run_bench("bench", "--quick", "--concurrency", "2", "--json", str(out), timeout=540)
    figures = json.loads(out.read_text())["runs"]["2"]
    assert set(figures["sections"]) == SECTIONS
    for name, rounds in figures["sections"].items():
        assert rounds, name
        for section in rounds:
            assert section["flows"] > 0 and section["throughput_per_s"] > 0, name
            assert section["errors"] == [], name
            assert section["commands_per_flow"] > 0, name
    assert figures["sections"]["success"][0]["bytes_per_flow"]["total"] > 0
    assert set(figures["ratios"]["targets"]) and "scale_large_over_small" in figures["ratios"]
    for heading in ("baseline chain", "saga success", "saga rollback", "PASS|MISS"):
        assert any(h in done.stdout for h in heading.split("|")), heading


@pytest.mark.timeout(300)
@pytest.mark.parametrize("what", ["throughput", "rollback", "floor", "peer"])
def test_the_ab_comparison_runs(what: str):
    if what == "peer" and importlib.util.find_spec("celery_saga") is None:
        missing("celery-saga is not installed (the `dev` extra: make installs it)")
    done = run_bench("bench.ab", what, "--rounds", "1", "--flows", "4", timeout=240)
    label = {"floor": "floor / chain", "peer": "saga / celery-saga"}.get(what, what)
    assert f"{label} at concurrency 2: median ratio" in done.stdout


@pytest.mark.timeout(300)
def test_the_cpu_probe_files_each_side(tmp_path: Path):
    probe = tmp_path / "probe"
    args = ("bench.ab", "floor", "--rounds", "1", "--flows", "4")
    run_bench(*args, timeout=240, env={"BENCH_CPU_PROBE": str(probe)})
    summary = run_bench("bench.cpu_probe", str(probe), "8", timeout=60).stdout
    for line in ("chain task bench.baseline.show", "floor task bench.floor.book", "saga task "):
        assert line in summary, summary
    assert "saga redis.commands.core.Script.__call__" in summary, summary


@pytest.mark.timeout(300)
def test_the_ab_comparison_runs_at_partner_speed_on_a_threads_pool():
    args = ("bench.ab", "cpu", "--rounds", "1", "--flows", "6", "--pool", "threads")
    done = run_bench(
        *args, "--concurrency", "4", "--latency-ms", "20", "--jitter-ms", "5", timeout=240
    )
    assert "1 x threads -c 4, partners 20 ms" in done.stdout
    assert "cpu ms per flow, saga, workers: median" in done.stdout


@pytest.mark.slow  # a whole stack per pool shape (~50 s): in make test-slow, with the scenarios
@pytest.mark.timeout(600)
def test_capacity_reports_each_configuration(tmp_path: Path):
    out, tables = tmp_path / "capacity.json", tmp_path / "capacity.md"
    done = run_bench(
        "bench.capacity", "--quick", "--json", str(out), "--markdown", str(tables), timeout=540
    )
    configurations = json.loads(out.read_text())["configurations"]
    assert {(c["shape"]["pool"], c["latency_ms"]) for c in configurations} == {
        ("prefork", 0),
        ("threads", 0),
        ("prefork", 50),
        ("threads", 50),
    }
    for c in configurations:
        summary = c["summary"]
        assert "error" not in summary, c
        assert summary["chain_per_s"] > 0 and summary["saga_per_s"] > 0
        assert summary["worker_cpu_ms_saga"] > 0 and summary["saturates"]
        assert all(s["errors"] == [] for ss in c["sections"].values() for s in ss)
    # The quick threads shape is the README's production layout: booking and undo apart.
    assert "saturates" in done.stdout and "-P threads -c 8 + 1 x -c 2 undo" in done.stdout
    assert [c["shape"]["undo"] for c in configurations if c["shape"]["pool"] == "threads"] == [2, 2]
    assert "| 1 x `-P threads -c 8` + 1 x `-c 2` undo |" in tables.read_text()

"""Another service, as the intake contract describes it: a Python with only `celery` installed.

The doors are tested from a separate process running in a virtual environment of its own that
holds `celery[redis]` (the versions this project's lock resolves) and nothing of this
project: not its packages, not `celeryconfig`, not its settings. It runs with `python -I`
(no PYTHONPATH, no user site, no current directory on sys.path) from an empty directory, and
gets only what a caller has: the deployment's `REDIS_URL`.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

# The same celery and redis client this project locks; an outside service may have others,
# and the contract (JSON, protocol 2, the default queue names) does not depend on ours.
PINS = [f"celery[redis]=={version('celery')}", f"redis=={version('redis')}"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vip-bundles"
OURS = ("tasks", "process_manager", "adapters", "vip_bundles", "celeryconfig", "partner_simulator")

# Appended to every snippet: proves the snippet ran without anything of ours importable.
_CHECK_ISOLATION = f"""
import importlib.util as _u, json as _j
print("OUTSIDER-ISOLATION " + _j.dumps([m for m in {OURS!r} if _u.find_spec(m) is not None]))
"""


@dataclass(frozen=True)
class Outsider:
    python: Path
    workdir: Path

    def run(self, code: str, redis_url: str, timeout: float = 90) -> str:
        """Run `code` as written (dedented) with REDIS_URL set; return its stdout."""
        script = self.workdir / "snippet.py"
        script.write_text(textwrap.dedent(code) + "\n" + _CHECK_ISOLATION)
        env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": redis_url, "LANG": "C.UTF-8"}
        proc = subprocess.run(
            [str(self.python), "-I", str(script)],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(f"the snippet failed:\n{code}\n--- stderr ---\n{proc.stderr}")
        lines = proc.stdout.splitlines()
        marker = [line for line in lines if line.startswith("OUTSIDER-ISOLATION ")]
        assert marker and json.loads(marker[-1].split(" ", 1)[1]) == [], "project code importable"
        return "\n".join(line for line in lines if not line.startswith("OUTSIDER-ISOLATION "))


def outsider(workdir: Path) -> Outsider:
    """The outsider's interpreter, built once per pinned version set and reused."""
    venv = CACHE / ("outsider-" + "-".join(p.split("==")[1] for p in PINS))
    python = venv / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "outsider.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if not (venv / ".complete").exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    *PINS,
                ],
                check=True,
            )
            (venv / ".complete").touch()
    workdir.mkdir(parents=True, exist_ok=True)
    return Outsider(python, workdir)

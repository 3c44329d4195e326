"""The previous release (the commit `deploy/previous-release` names), built from this clone's own
history into a directory of its own, to run beside this code (tests/reliability/test_mixed_fleet).

Its source comes from `git archive` (no worktree is added to the clone), and it runs in a venv of
its own: a bare `python -m venv` whose one `.pth` file puts that source and this checkout's
installed packages on its path. That is the previous release's own environment as long as every
pin of its `requirements.lock` is in ours (a release adds packages far more often than it moves
a pin); when one is not, its lock is installed into its venv from the package index instead.
This checkout's code is not on its path (our editable install's hook is a `.pth` file of our
site-packages, which a path line does not run), so `tasks`, `adapters`... are the old ones.

A shallow clone lacks the commit: that fails, saying so, rather than skipping (CI must fetch
the history: `git fetch --unshallow`, or `fetch-depth: 0`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

from vip_bundles.local_stack import ROOT

NAMED_IN = ROOT / "deploy" / "previous-release"


@dataclass(frozen=True)
class PreviousRelease:
    commit: str
    src: Path  # its source tree (the workers' working directory)
    python: Path  # its venv's interpreter

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` for one of its processes: its code on the path, not ours."""
        return {**env, "PYTHONPATH": str(self.src)}

    @property
    def short(self) -> str:
        return self.commit[:7]


def named_commit() -> str:
    return NAMED_IN.read_text().split()[0]


def _git(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, **kwargs)  # type: ignore[call-overload]


def _pins(lock: str) -> set[str]:
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9_.-]+==[^ \\\n]+)", lock, re.MULTILINE)}


def build(dest: Path) -> PreviousRelease:
    """Its source and venv under `dest`; `RuntimeError` saying why when it cannot be had."""
    commit = named_commit()
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true"
        why = (
            "this is a shallow clone: fetch the whole history (git fetch --unshallow, or "
            "actions/checkout with fetch-depth: 0)"
            if shallow
            else "is deploy/previous-release a commit of this repository?"
        )
        raise RuntimeError(f"previous release {commit} is not in this clone's history: {why}")
    src = dest / "src"
    src.mkdir(parents=True)
    archive = _git("archive", "--format=tar", commit, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)

    home = dest / "venv"
    theirs, ours = _pins((src / "requirements.lock").read_text()), _pins(_our_lock())
    shared = theirs <= ours
    venv.create(home, with_pip=not shared, symlinks=True)
    python = home / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    lines = [str(src)]
    if shared:
        lines.append(sysconfig.get_paths()["purelib"])  # ours: the same pins, and more
    else:
        lock = str(src / "requirements.lock")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--require-hashes", "-r", lock], check=True
        )
    (site / "previous_release.pth").write_text("\n".join(lines) + "\n")
    release = PreviousRelease(commit, src, python)
    found = subprocess.check_output(
        [str(python), "-c", "import tasks; print(tasks.__file__)"], cwd=src, text=True
    )
    if not found.strip().startswith(str(src)):
        raise RuntimeError(f"previous release's venv imports tasks from {found.strip()}")
    return release


def _our_lock() -> str:
    return (ROOT / "requirements.lock").read_text()


if __name__ == "__main__":  # build it by hand: python -m tests.reliability.previous_release DIR
    print(build(Path(sys.argv[1])))

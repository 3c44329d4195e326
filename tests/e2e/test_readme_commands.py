"""Every shell command in the README's `bash` blocks is one the project accepts as written.

The Python snippets run end to end (test_outsider_doors.py); the shell blocks start servers and
workers that run until stopped, so each command here is run with `--help` appended (`make -n`
for make targets): an option renamed or a command removed fails here, not at a user's.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vip_bundles import local_stack

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def commands() -> list[str]:
    found = []
    for block in BLOCKS:
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()  # a comment after two spaces
            if command and not command.startswith(("#", "export ")):
                found.append(command)
    return found


def runnable(command: str) -> list[str]:
    """The command as something to run here: with --help, from this checkout's environment."""
    argv = shlex.split(command)
    bin_dir = Path(sys.executable).parent
    match argv[0]:
        case "make":
            return ["make", "-n", *argv[1:]]
        case "celery" | "vip-bundles":
            return [str(bin_dir / argv[0]), *argv[1:], "--help"]
        case "python" | "python3" | ".venv/bin/python":
            return [sys.executable, *argv[1:], "--help"]
        case ".venv/bin/pytest":
            return [sys.executable, "-m", "pytest", "--co", "-q", *argv[1:]]
    raise AssertionError(f"the README runs a command this test does not know: {command}")


def test_the_readme_has_shell_commands():
    assert "make demo" in commands() and "make test" in commands()


@pytest.mark.parametrize("command", commands())
def test_every_readme_command_is_accepted_as_written(command: str):
    done = subprocess.run(
        runnable(command),
        cwd=ROOT,
        env=local_stack.celery_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr

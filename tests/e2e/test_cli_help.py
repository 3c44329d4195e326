"""`vip-bundles --help` and every command's `--help`, run as a user runs them (the installed
console script, in a subprocess): a new user's first command must never print a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vip_bundles.cli import cli

COMMANDS = sorted(c.name or c.callback.__name__.rstrip("_") for c in cli.registered_commands)


def vip_bundles(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("vip-bundles", path=str(Path(sys.executable).parent))
    assert script, "the vip-bundles console script is not installed beside this python"
    return subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=60, env={"COLUMNS": "120"}
    )


def test_the_program_help_lists_every_command():
    out = vip_bundles("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: vip-bundles")
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_working_help(command: str):
    out = vip_bundles(command, "--help")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Usage: vip-bundles {command}" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr

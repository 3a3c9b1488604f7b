"""The command line: every command has --help; the service path never imports TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream.cli import COMMANDS


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: tickcast" in proc.stdout


def test_service_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys, stream.cli, stream.service, stream.commands.run, stream.commands.replay;"
        "stream.cli.build_parser(only='run');"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

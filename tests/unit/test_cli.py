"""The command line: every command has --help; the service path never imports TensorFlow."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from stream import cli
from stream.cli import COMMANDS, build_parser


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


@pytest.mark.parametrize("package", ["tensorflow", "tools"])  # training stack, development tools
def test_service_modules_do_not_import(package: str) -> None:
    code = (
        "import sys, stream.cli, stream.service, stream.commands.run, stream.commands.replay;"
        "stream.cli.build_parser(only='run');"
        f"sys.exit(1 if {package!r} in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "X.toml", "run"],
        ["run", "--config", "X.toml"],
        ["--config", "other.toml", "run", "--config", "X.toml"],  # the later one wins
    ],
)
def test_config_is_accepted_before_and_after_the_command(argv: list[str]) -> None:
    args = build_parser(only="run").parse_args(argv)
    assert (args.command, args.config, args.verbose) == ("run", "X.toml", False)


@pytest.mark.parametrize("argv", [["-v", "run"], ["run", "-v"]])
def test_verbose_is_accepted_before_and_after_the_command(argv: list[str]) -> None:
    args = build_parser(only="run").parse_args(argv)
    assert (args.config, args.verbose) == (None, True)


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_config_path_reaches_the_command(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    class Run:
        """Stands in for stream.commands.run: records what main hands it."""

        @staticmethod
        def configure(parser: argparse.ArgumentParser) -> None:
            pass

        @staticmethod
        def run(args: argparse.Namespace) -> int:
            seen.append(args)
            return 0

    monkeypatch.setattr(cli, "_load", lambda name: Run)
    path = "run"  # named like a command: still read as the path
    argv = ["--config", path, "run"] if where == "before" else ["run", "--config", path]
    assert cli.main(argv) == 0
    assert [(a.command, a.config) for a in seen] == [("run", "run")]

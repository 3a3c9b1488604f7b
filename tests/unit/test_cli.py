"""The command line: every command has --help; the service path never imports TensorFlow."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import stream
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


def test_version_prints_the_installed_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"tickcast {stream.version()}"
    assert stream.version()[0].isdigit()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--symbols", "0"),
        ("--symbols", "-3"),
        ("--bad-fraction", "2"),
        ("--bad-fraction", "-0.1"),
        ("--rate", "-5"),
        ("--rate", "fast"),
        ("--rows", "0"),
        ("--last", "-1"),
    ],
)
def test_replay_rejects_impossible_values_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser(only="replay").parse_args(["replay", option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and value in err and "Traceback" not in err


def test_replay_accepts_the_edges() -> None:
    args = build_parser(only="replay").parse_args(
        ["replay", "--symbols", "1", "--bad-fraction", "1", "--rate", "0"]
    )
    assert (args.symbols, args.bad_fraction, args.rate) == (1, 1.0, 0.0)


@pytest.mark.parametrize("kind", ["KafkaFailure", "KafkaException"])
def test_a_kafka_error_is_one_line_and_a_non_zero_exit(
    kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from confluent_kafka import KafkaError, KafkaException

    from stream.errors import KafkaFailure

    def fail(args: argparse.Namespace) -> int:
        if kind == "KafkaFailure":
            raise KafkaFailure("produce to ticks: _TRANSPORT (Broker transport failure)")
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    failing = argparse.Namespace(configure=lambda parser: None, run=fail)
    monkeypatch.setattr(cli, "_load", lambda name: failing)
    assert cli.main(["replay"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tickcast replay: ")
    assert "Broker transport failure" in err

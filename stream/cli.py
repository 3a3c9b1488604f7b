"""`tickcast`: the command line. The only place that configures logging.

Each command lives in its own module exposing `configure(parser)` and `run(args) -> int`. Modules are
imported when their command runs (or when --help is built), and keep heavy imports (TensorFlow,
matplotlib) inside `run`, so `tickcast run` never pays for TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Protocol, cast

from stream import version
from stream.errors import TickcastError

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("stream.commands.run", "consume ticks, publish forecasts (the service)"),
    "replay": (
        "stream.commands.replay",
        "publish a CSV of prices (default: the gold series) as ticks",
    ),
    "tail": ("stream.commands.tail", "print forecasts as they arrive"),
    "models": (
        "stream.commands.models",
        "the artifacts, which is served and which is the challenger, with their live scores",
    ),
    "promote": ("stream.commands.promote", "make the challenger (or a version) the served model"),
    "schemas": (
        "stream.commands.schemas",
        "register the tick and forecast schemas with the Schema Registry (format.kind)",
    ),
    "serve": (
        "stream.serve.command",
        "the HTTP API: forecasts on request, on the stream's model and cache",
    ),
    "demo": (
        "tools.demo",
        "local Kafka + Redis, the gold series through the live consumer",
    ),
    "services": ("tools.localinfra", "start, stop or show the local Kafka broker and Redis"),
    "train": ("models.train", "train the CNN-Bi-LSTM and write a new artifact"),
    "evaluate": ("models.evaluate", "evaluate an artifact against persistence on held-out days"),
    "export": ("models.export", "export an artifact's Keras model to ONNX and re-hash it"),
    "bench": ("bench.cli", "benchmarks: `bench model`, `bench e2e`, `bench http`"),
}


class Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> Command:
    return cast(Command, importlib.import_module(COMMANDS[name][0]))


def _add_common_options(parser: argparse.ArgumentParser, *, on_command: bool) -> None:
    """--config and -v, accepted before the command and after it (`tickcast --config X run` and
    `tickcast run --config X`). On a command's parser they default to SUPPRESS: it sets them only
    when they follow the command, so a value given before the command is not overwritten."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS if on_command else None,
        help="settings file (default: ./config.toml)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if on_command else False,
        help="debug logging",
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickcast",
        description="Streaming price forecasts: Kafka ticks in, forecasts out.",
    )
    _add_common_options(parser, on_command=False)
    parser.add_argument("--version", action="version", version=f"tickcast {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        _add_common_options(p, on_command=True)
        # Building every subcommand's options would import every module; build only the one asked
        # for, so `tickcast run` starts without importing the training stack.
        if only is None or only == name:
            _load(name).configure(p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    after_config = False
    for arg in argv:
        if arg in COMMANDS and not after_config:
            return arg
        after_config = arg == "--config"  # its value is a path, even one named like a command
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = _command_in(argv)
    parser = build_parser(only=chosen if chosen is not None else "")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return _load(args.command).run(args)
    except TickcastError as exc:
        print(f"tickcast {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        # A Kafka client exception that escaped stream/kafka.py's translation into KafkaFailure
        # is still one line and a non-zero exit for the user, not a traceback; anything else is
        # a bug and keeps its traceback. Only the Kafka adapter knows the client's types.
        from stream.kafka import client_error_detail

        detail = client_error_detail(exc)
        if detail is None:
            raise
        print(f"tickcast {args.command}: kafka: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`tickcast bench`: `bench model` (the predictor alone) and `bench e2e` (the whole service)."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "model": ("bench.model", "predictor throughput and latency per backend and batch size"),
    "e2e": ("bench.e2e", "the real service: sustained ticks/s, ratio to the model, latency, RSS"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, summary) in BENCHES.items():
        importlib.import_module(module).configure(
            sub.add_parser(name, help=summary, description=summary)
        )


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(BENCHES[args.bench][0]).run(args))

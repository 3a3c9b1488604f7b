"""`tickcast bench`: `bench model` (the predictor alone), `bench e2e` (the whole service) and
`bench http` (the HTTP API)."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {
    "model": ("bench.model", "predictor throughput and latency per backend and batch size"),
    "e2e": ("bench.e2e", "the real service: sustained ticks/s, ratio to the model, latency, RSS"),
    "http": ("bench.http", "tickcast serve under wrk: requests/s, p50/p95/p99, ratio to the model"),
    "rivals": ("bench.rivals", "the same job by tickcast, a Bytewax dataflow, no framework"),
    "scoring": ("bench.scoring", "live scoring's cost per forecast in the pipeline, off and on"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, (module, summary) in BENCHES.items():
        importlib.import_module(module).configure(
            sub.add_parser(name, help=summary, description=summary)
        )


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(BENCHES[args.bench][0]).run(args))

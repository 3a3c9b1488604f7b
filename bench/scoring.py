"""`tickcast bench scoring`: what live scoring costs the pipeline, per forecast.

The real pipeline (stream/pipeline.py) over the real window store and cache in the configured
Redis, with the served model, fed the bundled gold series as `--symbols` symbols in batches of
`--batch` ticks; the same feed with scoring off and on, in interleaved runs (the machine's drift
falls on both), each on a fresh key prefix, timed after one warm-up pass that fills every window.
Reports the median time per forecast of `Pipeline.process` (decode, windows, cache, model, scores)
for each, and their difference.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from stream import config
from stream.cache import ForecastCache
from stream.contracts import Record
from stream.pipeline import Pipeline
from stream.predictor import Predictor, load_predictor
from stream.service import delete_keys, redis_client
from stream.windows import WindowStore


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ticks", type=int, default=60_000, help="timed ticks per run")
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="ticks per batch")
    parser.add_argument("--runs", type=int, default=5, help="runs of each (medians reported)")


def _feed(symbols: int, n: int) -> list[Record]:
    from models.data import GOLD_CSV, load_prices
    from tools.feed import ticks

    series = load_prices(GOLD_CSV)
    rows = -(-n // symbols)  # rows per symbol (at most the series' 13,932 days)
    return [
        Record("ticks", 0, offset, m.key, m.value)
        for offset, m in enumerate(ticks(series.dates, series.prices, symbols, "XAU", rows))
    ]


def _one_run(
    settings: config.Settings,
    predictor: Predictor,
    feed: list[Record],
    warm: int,
    batch: int,
    scoring: bool,
) -> tuple[float, int]:
    """Seconds per forecast over the timed part, and the scores it made."""
    client = redis_client(settings)
    prefix = f"bench-scoring-{uuid.uuid4().hex[:8]}"
    try:
        pipeline = Pipeline(
            WindowStore(client, prefix, settings.window.size, settings.window.history, "ticks"),
            ForecastCache(client, prefix, predictor.version, predictor.horizon, 120),
            predictor,
            "ticks",
            clock_ms=lambda: int(time.time() * 1000),
            scoring=scoring,
        )
        size = settings.processing.max_message_bytes
        for start in range(0, warm, batch):
            pipeline.process(feed[start : min(start + batch, warm)], size)
        forecasts = scores = 0
        started = time.perf_counter()
        for start in range(warm, len(feed), batch):
            result = pipeline.process(feed[start : start + batch], size)
            forecasts += len(result.forecasts)
            scores += len(result.scores)
        return (time.perf_counter() - started) / max(forecasts, 1), scores
    finally:
        delete_keys(client, prefix)
        client.close()


def run(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    predictor = load_predictor(settings.model, settings.window.size)
    warm = args.symbols * settings.window.size
    feed = _feed(args.symbols, warm + args.ticks)
    times: dict[bool, list[float]] = {False: [], True: []}
    made = 0
    for i in range(args.runs):
        for scoring in (False, True):
            seconds, scores = _one_run(settings, predictor, feed, warm, args.batch, scoring)
            times[scoring].append(seconds * 1e6)
            made = max(made, scores)
        print(
            f"run {i + 1}/{args.runs}: off {times[False][-1]:.1f} us, on {times[True][-1]:.1f} us"
        )
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"Pipeline.process per forecast, model {predictor.version} ({settings.model.backend}),"
        f" {args.symbols} symbols, batches of {args.batch}, medians of {args.runs}:"
        f" scoring off {off:.1f} us, on {on:.1f} us, +{on - off:.1f} us"
        f" ({made:,} scores per run)"
    )
    return 0

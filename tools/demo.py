"""`tickcast demo`: the gold series through the live consumer, end to end, with a summary.

1. Kafka and Redis: the configured ones if they answer, else the local ones (started here).
2. Fresh topics, group and key prefix for this run, so the summary counts only this run, and the
   real `tickcast run` process started as a subprocess (its log goes to .local/logs/).
3. The held-out days of the gold series (plus the 59 days before them that fill the first window)
   replayed as ticks for a few symbols, with a share of malformed messages mixed in.
4. Forecasts shown as they arrive. Halfway, the consumer is killed with SIGKILL and a new one
   started: it resumes from the last committed offsets, so some ticks are processed twice; their
   windows come back from the window store's history and their outputs from the cache.
5. The consumer is stopped with SIGTERM, and a summary printed: ticks in, forecasts out (every one
   expected, repeats identical), dead letters, cache hit share, accuracy against persistence.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from stream import config
from stream.contracts import Forecast
from tools.launch import ServiceProcess, ensure_services

if TYPE_CHECKING:
    from models.data import PriceSeries

TEST_START = "2012-04-26"  # first held-out day (models/split.py, shared data README)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--symbols", type=int, default=4, help="symbols derived from the gold series"
    )
    parser.add_argument(
        "--bad-fraction", type=float, default=0.01, help="share of malformed messages"
    )
    parser.add_argument(
        "--rate", type=float, default=4000.0, help="ticks per second (0: as fast as possible)"
    )
    parser.add_argument("--no-kill", action="store_true", help="do not kill the consumer halfway")
    parser.add_argument("--show", type=int, default=10, help="forecast lines to print")
    parser.add_argument(
        "--keep", action="store_true", help="keep this run's topics and Redis keys afterwards"
    )


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


@dataclass
class _Seen:
    first: dict[tuple[str, int, str], Forecast] = field(default_factory=dict)
    repeats: int = 0
    differing: int = 0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from models.data import GOLD_CSV, load_prices
    from stream.commands import replay as replay_cmd
    from stream.commands.tail import format_forecast
    from stream.kafka import ensure_topics
    from tools.feed import symbol_names

    started = time.monotonic()
    _say("1/5 Kafka and Redis")
    env = ensure_services(config.load(args.config))
    run_id = uuid.uuid4().hex[:8]
    env.update(
        {
            "TICKCAST_TOPICS__TICKS": f"demo-{run_id}.ticks",
            "TICKCAST_TOPICS__FORECASTS": f"demo-{run_id}.forecasts",
            "TICKCAST_TOPICS__DEAD_LETTER": f"demo-{run_id}.ticks.dlq",
            "TICKCAST_KAFKA__GROUP_ID": f"tickcast-demo-{run_id}",
            # Kafka's minimum: the killed consumer's partitions move on quickly.
            "TICKCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "TICKCAST_REDIS__KEY_PREFIX": f"tickcast-demo-{run_id}",
            "TICKCAST_METRICS__HOST": "127.0.0.1",
        }
    )
    os.environ.update(env)
    settings = config.load(args.config)

    series = load_prices(GOLD_CSV)
    first = int(np.searchsorted(series.dates, np.datetime64(TEST_START)))
    window = settings.window.size
    days = series.tail(len(series) - first + window - 1)
    expected = (len(days) - window + 1) * args.symbols

    _say(f"2/5 starting the consumer: tickcast run (topics demo-{run_id}.*)")
    topics = settings.topics
    ensure_topics(settings, [topics.ticks, topics.forecasts, topics.dead_letter])
    log_dir = Path(os.environ.get("TICKCAST_LOCAL_DIR", ".local")) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    consumer = ServiceProcess(log_dir / f"demo-{run_id}-run.log", config_path=args.config)
    port = consumer.port
    consumer.start()
    seen = _Seen()
    code = -1
    try:
        consumer.wait_ready()
        print(f"consumer ready; metrics at http://127.0.0.1:{port}/metrics")

        _say(
            f"3/5 replaying {len(days)} days of gold ({days.dates[0]} to {days.dates[-1]}) "
            f"x {args.symbols} symbols at {args.rate:,.0f} ticks/s, "
            f"{args.bad_fraction:.0%} malformed"
        )
        replay_args = argparse.Namespace(
            csv=None,
            symbols=args.symbols,
            symbol="XAUUSD",
            rows=None,
            last=len(days),
            rate=args.rate,
            bad_fraction=args.bad_fraction,
            seed=7,
            quiet=True,
        )
        sent: dict[str, int] = {}
        feeder = threading.Thread(
            target=lambda: sent.update(replay_cmd.publish(settings, topics.ticks, replay_args)),
            daemon=True,
        )
        feeder.start()

        _say(f"4/5 forecasts arriving (expecting {expected:,})")

        def halfway() -> None:
            if args.no_kill or consumer.starts > 1:
                return
            consumer.stop(signal.SIGKILL)
            print(
                f"  -- killed the consumer with SIGKILL after {len(seen.first):,} forecasts;"
                " starting a new one, which resumes from the last committed offsets",
                flush=True,
            )
            consumer.start()

        _collect(settings, expected, args.show, format_forecast, seen, halfway)
        feeder.join(timeout=60)
        dead = _dead_letters(settings, sent.get("bad", 0))
        scraped = consumer.metrics()
        code = consumer.stop(signal.SIGTERM)
    finally:
        consumer.kill_if_running()

    if not args.keep:
        _clean_up(settings)
    _say("5/5 summary")
    _summary(
        series,
        seen,
        symbol_names("XAUUSD", args.symbols)[0],
        scraped,
        sent,
        dead,
        expected,
        code,
        consumer,
        started,
    )
    ok = code == 0 and len(seen.first) == expected and seen.differing == 0
    return 0 if ok else 1


def _clean_up(settings: config.Settings) -> None:
    """Delete this run's topics and Redis keys: a broker slows down as partitions pile up."""
    from stream.kafka import delete_topics
    from stream.service import delete_keys, redis_client

    topics = settings.topics
    delete_topics(settings, [topics.ticks, topics.forecasts, topics.dead_letter])
    client = redis_client(settings)
    try:
        delete_keys(client, settings.redis.key_prefix)
    finally:
        client.close()


def _collect(
    settings: config.Settings,
    expected: int,
    show: int,
    fmt: Callable[[Forecast], str],
    seen: _Seen,
    halfway: Callable[[], None],
) -> None:
    """Read forecasts until every expected one arrived (or none for 30 s), printing about `show`."""
    from confluent_kafka import Consumer

    from stream.contracts import decode_forecast

    reader = Consumer(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"{settings.kafka.group_id}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    reader.subscribe([settings.topics.forecasts])
    step = max(expected // max(show, 1), 1)
    idle_since = time.monotonic()
    try:
        while len(seen.first) < expected and time.monotonic() - idle_since < 30:
            for msg in reader.consume(500, timeout=0.3):
                if msg.error():
                    continue
                f = decode_forecast(msg.value() or b"")
                key = (f.symbol, f.ts, f.model_version)
                idle_since = time.monotonic()
                if key in seen.first:
                    seen.repeats += 1
                    seen.differing += _without_cache_fields(
                        seen.first[key]
                    ) != _without_cache_fields(f)
                    continue
                seen.first[key] = f
                if len(seen.first) % step == 1 or step == 1:
                    print("  " + fmt(f), flush=True)
                if len(seen.first) >= expected // 2:
                    halfway()
    finally:
        reader.close()


def _without_cache_fields(f: Forecast) -> tuple[object, ...]:
    """A forecast without `cached` and `produced_at`, the two fields a repeat may change."""
    return tuple(
        getattr(f, name) for name in f.__struct_fields__ if name not in ("cached", "produced_at")
    )


def _dead_letters(settings: config.Settings, expect: int) -> dict[str, int]:
    """Dead letters by reason, read from the topic, once per source offset (a repeat after the
    kill is the same bad message)."""
    from confluent_kafka import Consumer

    reader = Consumer(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"{settings.kafka.group_id}-dlq-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([settings.topics.dead_letter])
    seen: dict[tuple[bytes, bytes], str] = {}
    deadline = time.monotonic() + 15
    try:
        while len(seen) < expect and time.monotonic() < deadline:
            for msg in reader.consume(500, timeout=0.3):
                if msg.error():
                    continue
                headers = cast("list[tuple[str, bytes]]", msg.headers() or [])
                h = dict(headers)
                where = (h.get("source.partition", b""), h.get("source.offset", b""))
                seen[where] = h.get("error", b"?").decode()
    finally:
        reader.close()
    counts: dict[str, int] = {}
    for reason in seen.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _summary(
    series: PriceSeries,
    seen: _Seen,
    symbol: str,
    scraped: dict[str, float],
    sent: dict[str, int],
    dead: dict[str, int],
    expected: int,
    code: int,
    consumer: ServiceProcess,
    started: float,
) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    def metric(prefix: str) -> float:
        return float(sum(v for k, v in scraped.items() if k.startswith(prefix)))

    # Accuracy on the held-out days: the base symbol is the gold series itself.
    day_ms = series.dates.astype("datetime64[ms]").astype(np.int64)
    ts_index = {int(t): i for i, t in enumerate(day_ms)}
    model_err, naive_err, inside = [], [], 0
    for f in seen.first.values():
        i = ts_index.get(f.ts)
        if f.symbol != symbol or i is None or i + 1 >= len(series):
            continue
        actual = float(series.prices[i + 1])
        model_err.append(abs(f.price - actual))
        naive_err.append(abs(f.last_price - actual))
        inside += f.lower <= actual <= f.upper
    n = len(model_err)
    mae = float(np.mean(model_err)) if n else float("nan")
    naive = float(np.mean(naive_err)) if n else float("nan")
    hits = metric('tickcast_cache_requests_total{result="hit"}')
    misses = metric('tickcast_cache_requests_total{result="miss"}')

    table = Table(title="tickcast demo", show_header=False)
    table.add_row("ticks in", f"{sent.get('ticks', 0):,} good + {sent.get('bad', 0):,} malformed")
    table.add_row(
        "forecasts out",
        f"{len(seen.first):,} of {expected:,} expected (one per full window), none missing"
        if len(seen.first) == expected
        else f"{len(seen.first):,} of {expected:,} expected: {expected - len(seen.first):,} MISSING",
    )
    table.add_row(
        "after the SIGKILL",
        f"{seen.repeats:,} forecasts published again, "
        + ("all identical to the first" if not seen.differing else f"{seen.differing} DIFFERENT"),
    )
    table.add_row(
        "dead letters",
        f"{sum(dead.values()):,}: " + ", ".join(f"{r} {n}" for r, n in sorted(dead.items())),
    )
    table.add_row(
        "cache",
        f"{hits / max(hits + misses, 1):.0%} hits on {int(hits + misses):,} lookups"
        " (redelivered windows and windows before, served without the model)",
    )
    table.add_row(
        f"accuracy, {symbol}",
        f"{n:,} held-out days: model MAE {mae:.2f} USD, persistence MAE {naive:.2f} USD, "
        f"MASE {mae / naive:.3f}, 80% interval coverage {inside / max(n, 1):.1%}",
    )
    for version, row in live_scores(scraped).items():
        table.add_row(
            f"live scores, model {version}",
            f"{int(row['n']):,} forecasts scored by the next tick since the restart: MAE"
            f" {row['mae']:.2f}, MASE {row['mase']:.3f} against persistence, interval coverage"
            f" {row['coverage']:.1%} (nominal {row['nominal']:.0%})",
        )
    table.add_row("consumer exit", f"{code} after SIGTERM (log {consumer.log_path})")
    table.add_row("metrics", f"http://127.0.0.1:{consumer.port}/metrics while a consumer runs")
    table.add_row("took", f"{time.monotonic() - started:.1f} s")
    Console().print(table)


def live_scores(scraped: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per model version, the service's own live scores (stream/scoring.py) from its metrics:
    how many, MAE, MASE against persistence, interval coverage and its nominal level."""
    import re

    sums: dict[str, dict[str, float]] = {}
    for key, value in scraped.items():
        m = re.match(r'(tickcast_score[a-z_]*)\{.*model_version="([^"]*)"', key)
        if m:
            row = sums.setdefault(m.group(2), {})
            row[m.group(1)] = row.get(m.group(1), 0.0) + value
    out = {}
    for version, row in sums.items():
        n = row.get("tickcast_scored_total", 0.0)
        naive = row.get("tickcast_score_persistence_abs_error_sum", 0.0)
        if n:
            out[version] = {
                "n": n,
                "mae": row.get("tickcast_score_abs_error_sum", 0.0) / n,
                "mase": row.get("tickcast_score_abs_error_sum", 0.0) / naive if naive else 0.0,
                "coverage": row.get("tickcast_score_interval_hits_total", 0.0) / n,
                "nominal": row.get("tickcast_score_interval", 0.0),
            }
    return out

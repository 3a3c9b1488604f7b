"""`tickcast demo`: the gold series through the live consumer, end to end, with a summary.

1. Kafka and Redis: the configured ones if they answer, else the local ones (started here).
2. Fresh topics, group and key prefix for this run, so the summary counts only this run.
3. The real `tickcast run` process, started as a subprocess (its log goes to .local/logs/).
4. The held-out days of the gold series (plus the 59 days before them that fill the first window)
   replayed as ticks for a few symbols, with a share of malformed messages mixed in.
5. Forecasts shown as they arrive; then the consumer is stopped with SIGTERM and a summary printed:
   ticks in, forecasts out, dead letters, cache hit share, accuracy against persistence.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stream import config
from stream.contracts import Forecast

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
        "--rate", type=float, default=0.0, help="ticks per second (0: as fast as possible)"
    )
    parser.add_argument("--show", type=int, default=12, help="forecast lines to print")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ensure_services(settings: config.Settings) -> dict[str, str]:
    """Environment overrides pointing at services that answer (starting local ones if needed)."""
    from stream import localinfra
    from stream.errors import UnreachableError
    from stream.kafka import check_reachable
    from stream.service import redis_client

    env: dict[str, str] = {}
    try:
        check_reachable(settings, timeout=3.0)
        kafka_ok = True
    except UnreachableError:
        kafka_ok = False
    try:
        redis_client(settings).close()
        redis_ok = True
    except UnreachableError:
        redis_ok = False
    if kafka_ok and redis_ok:
        print(
            f"using Kafka at {settings.kafka.bootstrap_servers} and Redis at {settings.redis.url}"
        )
        return env
    print("no Kafka/Redis answering at the configured addresses: starting the local ones")
    bootstrap, redis_url = localinfra.up()
    if not kafka_ok:
        env["TICKCAST_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    if not redis_ok:
        env["TICKCAST_REDIS__URL"] = redis_url
    return env


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from models.data import GOLD_CSV, load_prices
    from stream.commands import replay as replay_cmd
    from stream.commands.tail import format_forecast
    from stream.contracts import decode_forecast
    from stream.feed import symbol_names

    started = time.monotonic()
    base = config.load(args.config)
    _say("1/5 Kafka and Redis")
    env = ensure_services(config.load(args.config))
    run_id = uuid.uuid4().hex[:8]
    metrics_port = _free_port()
    env.update(
        {
            "TICKCAST_TOPICS__TICKS": f"demo-{run_id}.ticks",
            "TICKCAST_TOPICS__FORECASTS": f"demo-{run_id}.forecasts",
            "TICKCAST_TOPICS__DEAD_LETTER": f"demo-{run_id}.ticks.dlq",
            "TICKCAST_KAFKA__GROUP_ID": f"tickcast-demo-{run_id}",
            "TICKCAST_REDIS__KEY_PREFIX": f"tickcast-demo-{run_id}",
            "TICKCAST_METRICS__HOST": "127.0.0.1",
            "TICKCAST_METRICS__PORT": str(metrics_port),
        }
    )
    os.environ.update(env)
    settings = config.load(args.config)
    del base

    series = load_prices(GOLD_CSV)
    first = int(np.searchsorted(series.dates, np.datetime64(TEST_START)))
    window = settings.window.size
    days = series.tail(len(series) - first + window - 1)
    expected = (len(days) - window + 1) * args.symbols

    _say(f"2/5 starting the consumer: tickcast run (topics demo-{run_id}.*)")
    from stream.kafka import ensure_topics

    ensure_topics(
        settings, [settings.topics.ticks, settings.topics.forecasts, settings.topics.dead_letter]
    )
    log_dir = Path(os.environ.get("TICKCAST_LOCAL_DIR", ".local")) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"demo-{run_id}-run.log"
    cmd = [sys.executable, "-m", "stream.cli"]
    if args.config:
        cmd += ["--config", args.config]
    with log_path.open("w") as log_file:
        consumer = subprocess.Popen([*cmd, "run"], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_ready(metrics_port, consumer, log_path)
        print(
            f"consumer ready (pid {consumer.pid}); metrics at http://127.0.0.1:{metrics_port}/metrics"
        )

        _say(
            f"3/5 replaying {len(days)} days of gold ({days.dates[0]} to {days.dates[-1]}) "
            f"x {args.symbols} symbols, {args.bad_fraction:.0%} malformed"
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
            quiet=not sys.stdout.isatty(),
        )
        sent = replay_cmd.publish(settings, settings.topics.ticks, replay_args)
        print(f"published {sent['ticks']} ticks and {sent['bad']} malformed messages")

        _say(f"4/5 forecasts arriving (expecting {expected})")
        forecasts = _collect(settings, expected, args.show, format_forecast, decode_forecast)
        scraped = _scrape(metrics_port)
    finally:
        consumer.send_signal(signal.SIGTERM)
        try:
            code = consumer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            consumer.kill()
            code = -9

    _say("5/5 summary")
    symbol = symbol_names("XAUUSD", args.symbols)[0]
    _summary(
        series, forecasts, symbol, scraped, sent, expected, code, metrics_port, log_path, started
    )
    return 0 if code == 0 and len(forecasts) == expected else 1


def _wait_ready(
    port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0
) -> None:
    from stream.errors import TickcastError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise TickcastError(
                f"the consumer exited with code {proc.returncode}: {lines[-1]} (log {log_path})"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TickcastError(f"the consumer was not ready within {timeout:.0f} s; see {log_path}")


def _collect(
    settings: config.Settings,
    expected: int,
    show: int,
    fmt: Callable[[Forecast], str],
    decode: Callable[[bytes], Forecast],
) -> list[Forecast]:
    """Read forecasts until `expected` arrived or none came for 30 s, printing about `show`."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"{settings.kafka.group_id}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([settings.topics.forecasts])
    got: list[Forecast] = []
    idle_since = time.monotonic()
    step = max(expected // max(show, 1), 1)
    try:
        while len(got) < expected and time.monotonic() - idle_since < 30:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                f = decode(msg.value() or b"")
                got.append(f)
                idle_since = time.monotonic()
                if len(got) % step == 1 or step == 1:
                    print("  " + fmt(f), flush=True)
    finally:
        consumer.close()
    return got


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tickcast_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = values.get(name, 0.0) + float(value)
    return values


def _summary(
    series: PriceSeries,
    forecasts: list[Forecast],
    symbol: str,
    scraped: dict[str, float],
    sent: dict[str, int],
    expected: int,
    code: int,
    port: int,
    log_path: Path,
    started: float,
) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    def metric(prefix: str) -> float:
        return float(sum(v for k, v in scraped.items() if k.startswith(prefix)))

    # Accuracy on the held-out days: the base symbol is the unscaled, unrotated gold series.
    ts_index = {
        int(t): i for i, t in enumerate(series.dates.astype("datetime64[ms]").astype(np.int64))
    }
    model_err, naive_err, inside = [], [], 0
    for f in forecasts:
        if f.symbol != symbol:
            continue
        i = ts_index.get(f.ts)
        if i is None or i + 1 >= len(series):
            continue
        actual = float(series.prices[i + 1])
        model_err.append(abs(f.price - actual))
        naive_err.append(abs(f.last_price - actual))
        inside += f.lower <= actual <= f.upper
    n = len(model_err)
    mae, naive = (
        (float(np.mean(model_err)), float(np.mean(naive_err))) if n else (float("nan"),) * 2
    )
    hits = metric('tickcast_cache_requests_total{result="hit"}')
    misses = metric('tickcast_cache_requests_total{result="miss"}')

    table = Table(title="tickcast demo", show_header=False)
    table.add_row("ticks in", f"{sent['ticks']:,} good + {sent['bad']:,} malformed")
    table.add_row(
        "forecasts out", f"{len(forecasts):,} (expected {expected:,}: one per full window)"
    )
    table.add_row("dead letters", f"{int(metric('tickcast_dead_letters_total')):,}")
    table.add_row(
        "cache hit share", f"{hits / max(hits + misses, 1):.1%} of {int(hits + misses):,} lookups"
    )
    table.add_row(
        f"accuracy, {symbol}",
        f"{n:,} held-out days: model MAE {mae:.2f} USD, persistence MAE {naive:.2f} USD, "
        f"MASE {mae / naive:.3f}, 80% interval coverage {inside / max(n, 1):.1%}",
    )
    table.add_row("consumer exit", f"{code} after SIGTERM (log {log_path})")
    table.add_row("metrics", f"http://127.0.0.1:{port}/metrics (while the consumer runs)")
    table.add_row("took", f"{time.monotonic() - started:.1f} s")
    Console().print(table)

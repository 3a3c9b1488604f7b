"""`tickcast replay`: publish a CSV of (date, price) as ticks, for demos, tests and benchmarks."""

from __future__ import annotations

import argparse
import logging
import random
import time

import orjson

from stream import config
from stream.commands import bounded

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--csv", default=None, help="CSV of date,price (default: the bundled gold series)"
    )
    parser.add_argument(
        "--symbols",
        type=bounded(int, 1),
        default=1,
        help="derive N distinct symbols from the series",
    )
    parser.add_argument("--symbol", default="XAUUSD", help="symbol name (the base name when N > 1)")
    parser.add_argument(
        "--rows", type=bounded(int, 1), default=None, help="replay only the first N rows"
    )
    parser.add_argument(
        "--last", type=bounded(int, 1), default=None, help="replay only the last N rows"
    )
    parser.add_argument(
        "--rate",
        type=bounded(float, 0.0),
        default=0.0,
        help="ticks per second (0: as fast as possible)",
    )
    parser.add_argument(
        "--bad-fraction",
        type=bounded(float, 0.0, 1.0),
        default=0.0,
        help="share of malformed messages to mix in (0 to 1)",
    )
    parser.add_argument("--topic", default=None, help="target topic (default: topics.ticks)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from stream.kafka import check_reachable, ensure_topics

    settings = config.load(args.config)
    topic = args.topic or settings.topics.ticks
    # A broker that does not answer is one line naming the address (UnreachableError), not a
    # client exception from inside the topic creation.
    check_reachable(settings)
    ensure_topics(settings, [topic])
    sent = publish(settings, topic, args)
    print(f"replayed {sent['ticks']} ticks and {sent['bad']} malformed messages into {topic}")
    return 0


def publish(settings: config.Settings, topic: str, args: argparse.Namespace) -> dict[str, int]:
    from rich.progress import Progress

    from models.data import GOLD_CSV, load_prices
    from stream.errors import DeliveryError
    from stream.kafka import DeliveryLatch, Sink, producer_config
    from tools.feed import bad_message, ticks

    series = load_prices(args.csv or GOLD_CSV)
    if args.last:
        series = series.tail(args.last)
    rows = args.rows or len(series)
    total = min(rows, len(series)) * args.symbols
    from stream.service import registry_format

    wire = registry_format(settings)
    producer = Sink(producer_config(settings))
    latch = DeliveryLatch()
    rng = random.Random(args.seed)
    counts = {"ticks": 0, "bad": 0}
    started = time.monotonic()
    with Progress(disable=args.quiet, transient=True) as progress:
        task = progress.add_task(f"replay -> {topic}", total=total)
        for msg in ticks(series.dates, series.prices, args.symbols, args.symbol, rows):
            if args.bad_fraction and rng.random() < args.bad_fraction:
                _, bad = bad_message(counts["bad"], settings.processing.max_message_bytes)
                latch.sent()
                producer.produce(topic, bad.key, bad.value, on_delivery=latch.on_delivery)
                counts["bad"] += 1
            value = msg.value
            if wire is not None:  # the feed's JSON tick in the registry format
                tick = orjson.loads(value)
                value = wire.encode_tick(tick["symbol"], tick["price"], tick["ts"])
            latch.sent()
            producer.produce(topic, msg.key, value, on_delivery=latch.on_delivery)
            counts["ticks"] += 1
            if counts["ticks"] % 1000 == 0:
                progress.update(task, completed=counts["ticks"])
                producer.poll(0)
            if args.rate:
                # Pace against the start time, not per message, so sleeps do not accumulate drift.
                ahead = counts["ticks"] / args.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        progress.update(task, completed=counts["ticks"])
        left = producer.flush(60)
    if latch.error is not None:
        raise DeliveryError(f"ticks not delivered to {topic}: {latch.error}")
    if left:
        raise DeliveryError(f"{left} ticks not delivered to {topic} within 60 s")
    return counts

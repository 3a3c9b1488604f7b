"""`tickcast tail`: print forecasts as they arrive, one readable line each."""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid

from stream import config
from stream.contracts import Forecast


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest forecast"
    )
    parser.add_argument("--max", type=int, default=0, help="stop after N forecasts")
    parser.add_argument(
        "--idle-timeout", type=float, default=0.0, help="stop after S seconds without one"
    )
    parser.add_argument("--topic", default=None, help="default: topics.forecasts")
    parser.add_argument("--json", action="store_true", help="print the raw JSON instead")


def format_forecast(f: Forecast) -> str:
    day = dt.datetime.fromtimestamp(f.ts / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
    change = (f.price / f.last_price - 1) * 100
    return (
        f"{f.symbol:<12} {day}  last {f.last_price:>10.2f}  next {f.price:>10.2f} ({change:+.2f}%)"
        f"  {int(f.interval * 100)}% [{f.lower:.2f}, {f.upper:.2f}]"
        f"  model {f.model_version}{'  cached' if f.cached else ''}"
    )


def run(args: argparse.Namespace) -> int:
    from stream.contracts import decode_forecast
    from stream.kafka import Source

    settings = config.load(args.config)
    consumer = Source(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"tickcast-tail-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([args.topic or settings.topics.forecasts])
    seen = 0
    last = time.monotonic()
    try:
        while not args.max or seen < args.max:
            records = consumer.consume(1, 0.5)
            if not records:
                if args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                    break
                continue
            last = time.monotonic()
            value = records[0].value or b""
            print(
                value.decode() if args.json else format_forecast(decode_forecast(value)), flush=True
            )
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0

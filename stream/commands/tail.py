"""`tickcast tail`: print forecasts as they arrive, one readable line each.

No consumer group unless `--group NAME`: the topic's partitions are read from their end (or, with
--from-beginning, their start) by a consumer that never joins a group, so runs leave nothing
behind on the broker. An unknown topic or a broker that does not answer within --wait seconds is
one line and a non-zero exit; a message that is not a forecast is skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

from stream import config
from stream.commands import bounded
from stream.contracts import Forecast


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest forecast"
    )
    parser.add_argument("--max", type=bounded(int, 0), default=0, help="stop after N forecasts")
    parser.add_argument(
        "--idle-timeout",
        type=bounded(float, 0.0),
        default=0.0,
        help="stop after S seconds without one",
    )
    parser.add_argument("--topic", default=None, help="default: topics.forecasts")
    parser.add_argument("--json", action="store_true", help="print the raw JSON instead")
    parser.add_argument(
        "--group",
        metavar="NAME",
        default=None,
        help="read as a member of this consumer group, resuming from its offsets (default: none)",
    )
    parser.add_argument(
        "--wait",
        type=bounded(float, 0.0, low_open=True),
        default=10.0,
        metavar="S",
        help="give up when the broker does not answer within S seconds (default 10)",
    )


def format_forecast(f: Forecast) -> str:
    day = dt.datetime.fromtimestamp(f.ts / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
    change = (f.price / f.last_price - 1) * 100
    return (
        f"{f.symbol:<12} {day}  last {f.last_price:>10.2f}  next {f.price:>10.2f} ({change:+.2f}%)"
        f"  {int(f.interval * 100)}% [{f.lower:.2f}, {f.upper:.2f}]"
        f"  model {f.model_version}{'  cached' if f.cached else ''}"
    )


def run(args: argparse.Namespace) -> int:
    from stream.contracts import decode_forecast, encode_forecast
    from stream.kafka import TopicTail
    from stream.service import registry_format

    settings = config.load(args.config)
    wire = registry_format(settings)
    decode = wire.decode_forecast if wire is not None else decode_forecast
    topic = args.topic or settings.topics.forecasts
    reader = TopicTail(
        settings, topic, from_beginning=args.from_beginning, group=args.group, wait_s=args.wait
    )
    seen = 0
    last = time.monotonic()
    try:
        while not args.max or seen < args.max:
            records = reader.consume(1, 0.5)
            if not records:
                if args.idle_timeout and time.monotonic() - last > args.idle_timeout:
                    break
                continue
            last = time.monotonic()
            record = records[0]
            value = record.value or b""
            if args.json and wire is None:
                line = value.decode(errors="replace")
            else:
                try:
                    forecast = decode(value)
                    # --json with a registry format: the forecast's JSON form
                    line = (
                        encode_forecast(forecast).decode()
                        if args.json
                        else format_forecast(forecast)
                    )
                except ValueError as exc:
                    where = f"{record.topic}[{record.partition}]@{record.offset}"
                    print(f"tickcast tail: skipped {where}: {exc}", file=sys.stderr, flush=True)
                    continue
            print(line, flush=True)
            seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    return 0

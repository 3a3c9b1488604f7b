"""Feeds derived from the real series, and the malformed-message catalogue."""

from __future__ import annotations

import orjson

from models.data import GOLD_CSV, load_prices
from stream.contracts import Record, decode_batch
from tools.feed import BAD_MESSAGES, bad_message, symbol_names, ticks


def test_symbols_are_distinct_and_event_time_rises_per_symbol() -> None:
    series = load_prices(GOLD_CSV).head(300)
    feed = list(ticks(series.dates, series.prices, symbols=5, base="XAU", rows=200))
    assert len(feed) == 1000
    last: dict[str, int] = {}
    prices: dict[str, list[float]] = {}
    for m in feed:
        obj = orjson.loads(m.value)
        assert m.key == obj["symbol"].encode()
        assert obj["ts"] > last.get(obj["symbol"], -(2**62))
        last[obj["symbol"]] = obj["ts"]
        prices.setdefault(obj["symbol"], []).append(obj["price"])
    assert set(prices) == set(symbol_names("XAU", 5))
    assert len({tuple(p[:60]) for p in prices.values()}) == 5


def test_one_symbol_is_the_series_itself() -> None:
    series = load_prices(GOLD_CSV).head(10)
    feed = list(ticks(series.dates, series.prices, symbols=1, base="XAUUSD"))
    assert [orjson.loads(m.value)["price"] for m in feed] == [round(p, 4) for p in series.prices]


def test_every_bad_message_is_rejected_for_its_stated_reason() -> None:
    for i in range(len(BAD_MESSAGES) + 1):
        reason, msg = bad_message(i, max_message_bytes=1024)
        ticks_, rejected = decode_batch(
            [Record("ticks", 0, 0, msg.key, msg.value)], max_message_bytes=1024
        )
        assert not ticks_
        assert [r.reason for r in rejected] == [reason]

"""Tick feeds for replays, demos and benchmarks, derived from a real price series.

Symbol 0 is the series itself; symbol i of N follows it rotated by i * stride rows and scaled by
(1 + i / 100), so every symbol is real price movement, the symbols differ, and event time rises per
symbol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from stream.contracts import encode_tick

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class FeedMessage:
    key: bytes | None
    value: bytes
    symbol: str | None  # None for a deliberately malformed message


def symbol_names(base: str, count: int) -> list[str]:
    """The first symbol is the series itself under `base`; the others are derived from it."""
    return [base] + [f"{base}.{i:03d}" for i in range(1, count)]


def ticks(
    dates: npt.NDArray[np.datetime64],
    prices: npt.NDArray[np.float64],
    symbols: int = 1,
    base: str = "XAUUSD",
    rows: int | None = None,
) -> Iterator[FeedMessage]:
    """Interleaved ticks: row 0 of every symbol, then row 1, ... (as a live feed would send them)."""
    n = len(prices) if rows is None else min(rows, len(prices))
    names = symbol_names(base, symbols)
    stride = max(len(prices) // max(symbols, 1), 1)
    ts = (dates[:n].astype("datetime64[ms]").astype(np.int64)).tolist()
    for row in range(n):
        for i, name in enumerate(names):
            price = float(prices[(row + i * stride) % len(prices)]) * (1 + i / 100)
            yield FeedMessage(name.encode(), encode_tick(name, round(price, 4), ts[row]), name)


#: One example of each malformed-input class the consumer must dead-letter, by expected reason.
BAD_MESSAGES: tuple[tuple[str, bytes | None, bytes], ...] = (
    ("not_json", None, b"price=1951.45"),
    ("not_object", None, b"[1951.45]"),
    ("missing_field", None, b'{"symbol": "XAUUSD", "ts": 1714559400000}'),
    ("wrong_type", None, b'{"symbol": "XAUUSD", "price": "1951.45", "ts": 1714559400000}'),
    ("not_finite", None, b'{"symbol": "XAUUSD", "price": NaN, "ts": 1714559400000}'),
    ("non_positive_price", None, b'{"symbol": "XAUUSD", "price": -3.5, "ts": 1714559400000}'),
    ("bad_symbol", None, b'{"symbol": "XAU USD!", "price": 1951.45, "ts": 1714559400000}'),
    ("key_mismatch", b"EURUSD", b'{"symbol": "XAUUSD", "price": 1951.45, "ts": 1714559400000}'),
    ("bad_utf8", None, b'{"symbol": "XAU\xff", "price": 1951.45, "ts": 1714559400000}'),
)


def bad_message(index: int, max_message_bytes: int = 65_536) -> tuple[str, FeedMessage]:
    """The index-th malformed message, cycling through every class (oversize included)."""
    classes = len(BAD_MESSAGES) + 1
    k = index % classes
    if k == len(BAD_MESSAGES):
        big = (
            b'{"symbol": "XAUUSD", "price": 1.0, "ts": 1, "pad": "'
            + b"x" * max_message_bytes
            + b'"}'
        )
        return "oversize", FeedMessage(None, big, None)
    reason, key, value = BAD_MESSAGES[k]
    return reason, FeedMessage(key, value, None)

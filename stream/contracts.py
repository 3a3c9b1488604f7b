"""Wire contracts of tickcast: the values that travel through the hot path, and their codecs.

Ticks are validated exactly once, here, at decode; everything downstream trusts a `Tick`. The
values on the per-message path are frozen msgspec Structs (built in a tenth of the time of a frozen
dataclass, which matters thousands of times a second; no pydantic there either). A tick is parsed
by msgspec straight into its typed shape; anything that does not fit that shape goes the slow way
(orjson and explicit checks), which names the reason.

A bad input never raises out of `decode_batch`: it becomes a `Rejected` with one of the reasons
below, which the Kafka adapter sends to the dead-letter topic with `dead_letter_headers`.

    empty               value missing or empty (a tombstone)
    oversize            value longer than processing.max_message_bytes (checked before parsing)
    bad_utf8            value is not UTF-8
    not_json            value is not JSON
    not_object          JSON, but not an object
    missing_field       symbol, price or ts absent
    wrong_type          a field of the wrong JSON type (booleans are not numbers; ts is an integer)
    not_finite          NaN, Infinity or a number too large for a double
    non_positive_price  price <= 0
    bad_symbol          symbol is not 1-32 chars of [A-Za-z0-9._:/-]
    bad_ts              ts outside +-(2**53 - 1) ms
    key_mismatch        the message key is present and differs from the symbol
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

#: Event times are limited to the integers a double holds exactly: the window store keeps them in
#: Redis Lua, whose numbers are doubles. +-2**53 ms is +-285,000 years, ample for any replay.
TS_LIMIT = 2**53 - 1

#: How much of an offending input a rejection detail may quote.
_QUOTE_BYTES = 60

_SYMBOL = re.compile(r"[A-Za-z0-9._:/-]{1,32}")

REASONS = (
    "empty",
    "oversize",
    "bad_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "not_finite",
    "non_positive_price",
    "bad_symbol",
    "bad_ts",
    "key_mismatch",
)


class Record(msgspec.Struct, frozen=True, gc=False):
    """A message as it was read from Kafka, in tickcast's own terms.

    The Kafka adapter (stream/kafka.py) builds one per consumed message, so nothing past the source
    knows the client library's types. `timestamp` is the message's Kafka timestamp in epoch ms
    (-1 when the broker gave none).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1
    headers: tuple[tuple[str, bytes | None], ...] = ()


class Tick(msgspec.Struct, frozen=True, gc=False):
    """A validated price tick and where it came from."""

    symbol: str
    price: float
    ts: int
    partition: int
    offset: int


class _TickFields(msgspec.Struct):
    """The JSON shape of a tick, for the fast path of decode_batch (other keys are ignored)."""

    symbol: str
    price: float
    ts: int


_decode_tick_fields = msgspec.json.Decoder(_TickFields).decode


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid tick; carries the original bytes for the dead-letter topic."""

    reason: str
    detail: str
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


def dead_letter_headers(r: Rejected) -> list[tuple[str, bytes]]:
    return [
        ("error", r.reason.encode()),
        ("error.detail", r.detail.encode()),
        ("source.topic", r.topic.encode()),
        ("source.partition", str(r.partition).encode()),
        ("source.offset", str(r.offset).encode()),
    ]


class _Invalid(Exception):
    """Internal: raised by the field checks, turned into a `Rejected` by decode_batch."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class _NonFinite(Exception):
    """Internal: the fallback parser met NaN, Infinity or an overflowing number."""


def _quote(value: object) -> str:
    """A short repr of untrusted input for a detail line (never more than ~_QUOTE_BYTES)."""
    text = ascii(value)
    if len(text) > _QUOTE_BYTES:
        return text[:_QUOTE_BYTES] + "..."
    return text


def _reject_constant(token: str) -> Any:
    raise _NonFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NonFinite(token)
    return value


def _classify_unparsable(value: bytes, error: Exception) -> _Invalid:
    """orjson refused `value`; say why in the terms of the contract."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Invalid("bad_utf8", f"invalid UTF-8 at byte {exc.start}")
    # orjson rejects NaN/Infinity literals and overflowing numbers like any other syntax error; the
    # contract calls those not_finite. The stdlib parser tells them apart (on this cold path only).
    try:
        json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        return _Invalid("not_finite", f"non-finite number {_quote(str(exc))}")
    except (ValueError, RecursionError):
        pass
    return _Invalid("not_json", _quote(str(error)))


def _number(obj: dict[str, Any], name: str) -> Any:
    if name not in obj:
        raise _Invalid("missing_field", f"{name} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("wrong_type", f"{name} must be a number, got {type(value).__name__}")
    return value


#: Symbols already found valid: a set lookup instead of a regex match per tick. Bounded, since
#: the symbols come from the input.
_valid_symbols: set[str] = set()
_MAX_REMEMBERED = 100_000


def _remember_symbol(symbol: str) -> bool:
    if _SYMBOL.fullmatch(symbol) is None:
        return False
    if len(_valid_symbols) >= _MAX_REMEMBERED:
        _valid_symbols.clear()
    _valid_symbols.add(symbol)
    return True


def _fields(obj: Any) -> tuple[str, float, int]:
    if not isinstance(obj, dict):
        raise _Invalid("not_object", f"JSON {type(obj).__name__}, expected an object")
    if "symbol" not in obj:
        raise _Invalid("missing_field", "symbol is missing")
    symbol = obj["symbol"]
    if not isinstance(symbol, str):
        raise _Invalid("wrong_type", f"symbol must be a string, got {type(symbol).__name__}")
    if _SYMBOL.fullmatch(symbol) is None:
        raise _Invalid("bad_symbol", f"symbol {_quote(symbol)}: 1-32 chars of [A-Za-z0-9._:/-]")

    raw_price = _number(obj, "price")
    try:
        price = float(raw_price)
    except OverflowError:
        raise _Invalid("not_finite", "price too large for a double") from None
    if not math.isfinite(price):
        raise _Invalid("not_finite", f"price {price!r}")
    if price <= 0:
        raise _Invalid("non_positive_price", f"price {price!r} <= 0")

    ts = _number(obj, "ts")
    if isinstance(ts, float):
        # orjson turns integer literals beyond 64 bits into floats: that is a range problem.
        if math.isfinite(ts) and ts.is_integer() and abs(ts) > TS_LIMIT:
            raise _Invalid("bad_ts", "ts out of range (+-2**53 - 1 ms)")
        raise _Invalid("wrong_type", f"ts must be an integer (epoch ms), got {_quote(ts)}")
    if not -TS_LIMIT <= ts <= TS_LIMIT:
        raise _Invalid("bad_ts", f"ts {_quote(ts)} out of range (+-2**53 - 1 ms)")
    return symbol, price, ts


def decode_batch(
    records: Sequence[Record], max_message_bytes: int
) -> tuple[list[Tick], list[Rejected]]:
    """Decode and validate a batch in one pass; never raises for any message content."""
    ticks: list[Tick] = []
    rejected: list[Rejected] = []
    fast = _decode_tick_fields
    valid_symbols = _valid_symbols
    for record in records:
        value = record.value
        key = record.key
        part = record.partition
        off = record.offset
        try:
            if not value:
                raise _Invalid("empty", "no value (tombstone)")
            if len(value) > max_message_bytes:
                raise _Invalid("oversize", f"{len(value)} bytes > {max_message_bytes}")
            # The common case, a well-formed tick: typed by msgspec, then a few range tests.
            # Anything else goes through _slow_fields, which names the reason
            # (test_fast_path_agrees_with_the_checks).
            try:
                fields = fast(value)
                symbol, price, ts = fields.symbol, fields.price, fields.ts
                if not (
                    0.0 < price < math.inf
                    and -TS_LIMIT <= ts <= TS_LIMIT
                    and (symbol in valid_symbols or _remember_symbol(symbol))
                ):
                    symbol, price, ts = _slow_fields(value)
            except (msgspec.DecodeError, UnicodeDecodeError):  # bad UTF-8 in a string
                symbol, price, ts = _slow_fields(value)
            if key is not None and key != symbol.encode():
                raise _Invalid("key_mismatch", f"key {_quote(key)} != symbol {symbol!r}")
        except _Invalid as bad:
            rejected.append(Rejected(bad.reason, bad.detail, value, key, record.topic, part, off))
            continue
        ticks.append(Tick(symbol, price, ts, part, off))
    return ticks, rejected


def _slow_fields(value: bytes) -> tuple[str, float, int]:
    """Parse with orjson and check field by field: a valid tick's fields, or _Invalid."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _classify_unparsable(value, exc) from None
    symbol, price, ts = _fields(obj)
    return symbol, float(price), ts


def encode_tick(symbol: str, price: float, ts: int) -> bytes:
    """The wire form of a tick (used by the replay producer)."""
    return orjson.dumps({"symbol": symbol, "price": float(price), "ts": int(ts)})


class Window(msgspec.Struct, frozen=True, eq=False, gc=False):
    """The W prices ending at `tick` (so `prices[-1] == tick.price`), oldest first.

    `replayed` is true when the tick was a redelivery and the window comes from the history.
    `prices` is a read-only float64 array; equality is by identity because it holds an array.
    """

    tick: Tick
    prices: npt.NDArray[np.float64]
    replayed: bool


class Source(msgspec.Struct, frozen=True, gc=False):
    """Where the tick that completed a forecast's window was read."""

    topic: str
    partition: int
    offset: int


class Forecast(msgspec.Struct, frozen=True, gc=False):
    """A forecast, field for field its wire form (so the codec is msgspec's, in this order)."""

    symbol: str
    ts: int
    horizon: int
    price: float
    lower: float
    upper: float
    interval: float
    last_price: float
    model_version: str
    window_hash: str
    cached: bool
    source: Source
    produced_at: int


_encode_forecast = msgspec.json.Encoder().encode
_decode_forecast = msgspec.json.Decoder(Forecast).decode


def encode_forecast(f: Forecast) -> bytes:
    """The wire form of a forecast. Field order is fixed, so equal forecasts encode identically.

    The pipeline never builds a forecast with a non-finite number (JSON has none)."""
    return _encode_forecast(f)


def decode_forecast(data: bytes) -> Forecast:
    """Parse a forecast message (for `tickcast tail` and tests); raises ValueError if malformed.

    Typed: a missing field, a wrong type (a boolean is not a number) or a float where an integer
    belongs is an error; unknown fields are ignored, so readers survive an added field."""
    try:
        return _decode_forecast(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a forecast: {exc}") from None


def forecast_headers(f: Forecast) -> list[tuple[str, bytes]]:
    return [
        ("model-version", f.model_version.encode()),
        ("source-offset", str(f.source.offset).encode()),
    ]

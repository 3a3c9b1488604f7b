"""Wire contracts of tickcast: the values that travel through the hot path, and their codecs.

Ticks are validated exactly once, here, at decode; everything downstream trusts a `Tick`. The
values on the per-message path are frozen msgspec Structs (built in a tenth of the time of a frozen
dataclass, which matters thousands of times a second; no pydantic there either). A tick is parsed
by msgspec straight into its typed shape; anything that does not fit that shape goes the slow way
(orjson and explicit checks), which names the reason.

Decoding is total: for any bytes (any size, any nesting, invalid UTF-8 anywhere, value or key)
`decode_batch` returns a `Tick` or a `Rejected` with one of the reasons below, never an exception.
The Kafka adapter sends a `Rejected` to the dead-letter topic with `dead_letter_headers`. The
first check that fails names the reason; they run in this order: empty, oversize, UTF-8 (value,
then key), parsing, then the fields (symbol, price, ts, each completely: missing, type, range),
future, and the key last.

    empty               value missing or empty (a tombstone)
    oversize            value longer than processing.max_message_bytes (checked before parsing)
    bad_utf8            value or key is not UTF-8, anywhere (ignored fields included)
    not_json            value is not JSON, or is nested deeper than 1024 levels (detail: "nesting
                        deeper than 1024 levels"; the parser's fixed limit, never the Python stack's)
    not_finite          NaN, Infinity, or a number beyond a double, anywhere in the document
    not_object          JSON, but not an object
    missing_field       symbol, price or ts absent
    wrong_type          a field of the wrong JSON type (booleans are not numbers; ts is an integer)
    bad_symbol          symbol is not 1-32 chars of [A-Za-z0-9._:/-]
    non_positive_price  price <= 0
    bad_ts              ts outside +-(2**53 - 1) ms
    future              ts above `max_ts` (the caller's clock plus window.max_future_ms)
    key_mismatch        the message key is present and differs from the symbol

not_json and not_finite are decided by the first problem in the text, read left to right: a
document with a NaN before its syntax error is not_finite, one with the error first is not_json.

A dead letter keeps the original value when it fits `dead_letter_max_bytes`; a larger one is cut to
that size and carries its original size and SHA-256 (headers `error.truncated`, `source.sha256`).
A key over DEAD_LETTER_KEY_MAX_BYTES (no symbol is near it) is cut too (`error.key_truncated`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Sequence
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

#: A dead letter's key is cut to this many bytes (a symbol has at most 32), so that a huge key
#: cannot make the dead letter itself too large to produce.
DEAD_LETTER_KEY_MAX_BYTES = 1024

#: orjson's fixed nesting limit (arrays and objects together). Deeper documents are not_json.
MAX_DEPTH = 1024

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
    "future",
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


class _TickFields(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON shape of a tick, exactly, for the fast path of decode_batch.

    Unknown fields are refused here (and accepted by the slow path): msgspec skips an unknown
    field's value without checking its UTF-8 or its numbers, and descends into it on the C stack,
    so only orjson may judge one (a 1,000-deep list in an ignored field raised RecursionError).
    """

    symbol: str
    price: float
    ts: int


_decode_tick_fields = msgspec.json.Decoder(_TickFields).decode


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is not a valid tick; carries the original bytes for the dead-letter topic.

    `original_size` and `sha256` are set when `value` was cut to fit a dead letter (`truncated`);
    `key_original_size` when `key` was cut to DEAD_LETTER_KEY_MAX_BYTES.
    """

    reason: str
    detail: str
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int
    original_size: int | None = None
    sha256: str | None = None
    key_original_size: int | None = None

    def truncated(self, max_bytes: int | None) -> Rejected:
        """This dead letter with its value cut to `max_bytes` (None: kept whole) and its key cut
        to DEAD_LETTER_KEY_MAX_BYTES; itself if both fit. The original size and digest stay."""
        value, key = self.value, self.key
        cut_value = value is not None and max_bytes is not None and len(value) > max_bytes
        cut_key = key is not None and len(key) > DEAD_LETTER_KEY_MAX_BYTES
        if not (cut_value or cut_key):
            return self
        original_size, sha256, key_size = self.original_size, self.sha256, self.key_original_size
        if cut_value and value is not None:
            if original_size is None:
                original_size, sha256 = len(value), hashlib.sha256(value).hexdigest()
            value = value[:max_bytes]
        if cut_key and key is not None:
            key_size, key = len(key), key[:DEAD_LETTER_KEY_MAX_BYTES]
        return dataclasses.replace(
            self,
            value=value,
            key=key,
            original_size=original_size,
            sha256=sha256,
            key_original_size=key_size,
        )


def dead_letter_headers(r: Rejected) -> list[tuple[str, bytes]]:
    headers = [
        ("error", r.reason.encode()),
        ("error.detail", r.detail.encode()),
        ("source.topic", r.topic.encode()),
        ("source.partition", str(r.partition).encode()),
        ("source.offset", str(r.offset).encode()),
    ]
    if r.original_size is not None:
        headers.append(("error.truncated", str(r.original_size).encode()))
    if r.sha256 is not None:
        headers.append(("source.sha256", r.sha256.encode()))
    if r.key_original_size is not None:
        headers.append(("error.key_truncated", str(r.key_original_size).encode()))
    return headers


class _Invalid(Exception):
    """Internal: raised by the field checks, turned into a `Rejected` by decode_batch."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class Undecodable(_Invalid):
    """A value a registry format cannot decode (stream/formats.py); `reason` is the dead
    letter's error header."""


def _quote(value: object) -> str:
    """A short repr of untrusted input for a detail line (never more than ~_QUOTE_BYTES)."""
    if isinstance(value, str | bytes) and len(value) > _QUOTE_BYTES:
        value = value[:_QUOTE_BYTES]  # before ascii(): the input may be megabytes
    text = ascii(value)
    if len(text) > _QUOTE_BYTES:
        return text[:_QUOTE_BYTES] + "..."
    return text


#: A number (or NaN/Infinity) starting where orjson stopped. ASCII digits only: `\d` is Unicode.
_NUMBER_AT = re.compile(r"-?(?:NaN|Infinity|[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)")


def _classify_unparsable(value: bytes, error: orjson.JSONDecodeError) -> _Invalid:
    """orjson refused `value`; say why in the terms of the contract.

    orjson reads left to right, stops at the first problem and gives its position, so the token
    there decides: NaN, Infinity or a number beyond a double is not_finite, anything else
    not_json. orjson's depth limit is fixed (MAX_DEPTH), never the Python stack's, so the answer
    does not depend on who calls.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Invalid("bad_utf8", f"invalid UTF-8 at byte {exc.start}")
    pos = error.pos  # an index into the decoded text
    if text[pos - 1 : pos] == "-":  # orjson points past the sign of -Infinity
        pos -= 1
    number = _NUMBER_AT.match(text, pos)
    if number is not None:
        token = number.group()
        if token.lstrip("-") in ("NaN", "Infinity") or math.isinf(float(token)):
            return _Invalid("not_finite", f"non-finite number {_quote(token)} at {pos}")
    if "depth" in error.msg:  # orjson: "depth limit exceeded"; only the detail depends on it
        return _Invalid("not_json", f"nesting deeper than {MAX_DEPTH} levels at {pos}")
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


def _fields(obj: Any, max_ts: int | None = None) -> tuple[str, float, int]:
    if not isinstance(obj, dict):
        raise _Invalid("not_object", f"JSON {type(obj).__name__}, expected an object")
    if "symbol" not in obj:
        raise _Invalid("missing_field", "symbol is missing")
    symbol = obj["symbol"]
    if not isinstance(symbol, str):
        raise _Invalid("wrong_type", f"symbol must be a string, got {type(symbol).__name__}")
    if symbol not in _valid_symbols and not _remember_symbol(symbol):
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
    if max_ts is not None and ts > max_ts:
        raise _Invalid("future", f"ts {ts} > {max_ts} (the clock plus window.max_future_ms)")
    return symbol, price, ts


def decode_batch(
    records: Sequence[Record],
    max_message_bytes: int,
    *,
    max_ts: int | None = None,
    dead_letter_max_bytes: int | None = None,
    parse: Callable[[bytes], Any] | None = None,
) -> tuple[list[Tick], list[Rejected]]:
    """Decode and validate a batch in one pass; never raises for any message content.

    `parse`: a registry format's decoder (stream/formats.py), whose fields get the same checks
    as a JSON tick's; None: JSON.

    `max_ts`: the latest acceptable event time (the clock plus window.max_future_ms); a later
    tick is `future`. None: no bound. `dead_letter_max_bytes`: rejected values longer than this
    are cut to it (`Rejected.truncated`); None: kept whole.
    """
    ticks: list[Tick] = []
    rejected: list[Rejected] = []
    fast = _decode_tick_fields
    valid_symbols = _valid_symbols
    ts_high = TS_LIMIT if max_ts is None else min(TS_LIMIT, max_ts)
    for record in records:
        value = record.value
        key = record.key
        try:
            if not value:
                raise _Invalid("empty", "no value (tombstone)")
            if len(value) > max_message_bytes:
                raise _Invalid("oversize", f"{len(value)} bytes > {max_message_bytes}")
            if parse is not None:
                symbol, price, ts = _fields(parse(value), max_ts)
                if key is not None and key != symbol.encode():
                    raise _Invalid("key_mismatch", f"key {_quote(key)} != symbol {symbol!r}")
                ticks.append(Tick(symbol, float(price), ts, record.partition, record.offset))
                continue
            # The common case, a well-formed tick of exactly the three fields: typed by msgspec
            # (which checks the UTF-8 of the one string), then a few range tests. Anything else
            # goes through _slow_fields, which names the reason
            # (test_fast_path_agrees_with_the_checks).
            try:
                fields = fast(value)
                symbol, price, ts = fields.symbol, fields.price, fields.ts
                if not (
                    0.0 < price < math.inf
                    and -TS_LIMIT <= ts <= ts_high
                    and (symbol in valid_symbols or _remember_symbol(symbol))
                ):
                    symbol, price, ts = _slow_fields(value, max_ts, ts_high)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                symbol, price, ts = _slow_fields(value, max_ts, ts_high)
            # A symbol is ASCII, so a key equal to its bytes is valid UTF-8: the key's own check
            # is needed only on the way to a rejection (_rejected).
            if key is not None and key != symbol.encode():
                raise _Invalid("key_mismatch", f"key {_quote(key)} != symbol {symbol!r}")
        except _Invalid as bad:
            rejected.append(_rejected(bad, record, dead_letter_max_bytes))
            continue
        ticks.append(Tick(symbol, price, ts, record.partition, record.offset))
    return ticks, rejected


def _rejected(bad: _Invalid, record: Record, dead_letter_max_bytes: int | None) -> Rejected:
    reason, detail = bad.reason, bad.detail
    key = record.key
    if key is not None and reason not in ("empty", "oversize", "bad_utf8"):
        # The key is checked right after the value's size, before any parsing.
        try:
            key.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason, detail = "bad_utf8", f"key: invalid UTF-8 at byte {exc.start}"
    r = Rejected(reason, detail, record.value, key, record.topic, record.partition, record.offset)
    return r.truncated(dead_letter_max_bytes)


def _slow_fields(value: bytes, max_ts: int | None, ts_high: int) -> tuple[str, float, int]:
    """Parse with orjson and check field by field: a valid tick's fields, or _Invalid.

    orjson checks the whole document (UTF-8, numbers, depth), ignored fields included. A valid
    tick with extra fields comes this way, so it is accepted by a few exact type tests first
    (orjson's ints are within 64 bits, its floats finite); _fields names what is wrong."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _classify_unparsable(value, exc) from None
    if type(obj) is dict:
        symbol, price, ts = obj.get("symbol"), obj.get("price"), obj.get("ts")
        if (
            type(symbol) is str
            and (type(price) is float or type(price) is int)
            and type(ts) is int
            and price > 0
            and -TS_LIMIT <= ts <= ts_high
            and (symbol in _valid_symbols or _remember_symbol(symbol))
        ):
            return symbol, float(price), ts
    symbol, price, ts = _fields(obj, max_ts)
    return symbol, float(price), ts


def encode_tick(symbol: str, price: float, ts: int) -> bytes:
    """The wire form of a tick (used by the replay producer)."""
    return orjson.dumps({"symbol": symbol, "price": float(price), "ts": int(ts)})


class Window(msgspec.Struct, frozen=True, eq=False, gc=False):
    """The W prices ending at `tick` (so `prices[-1] == tick.price`), oldest first.

    `replayed` is true when the tick was a redelivery and the window comes from the history.
    `before` is the symbol's price just before `prices[0]`, NaN when the store does not hold it
    (the symbol's first window): the previous window, `[before] + prices[:-1]`, is the one whose
    forecast `tick` scores. `prices` is a read-only float64 array; equality is by identity
    because it holds an array.
    """

    tick: Tick
    prices: npt.NDArray[np.float64]
    replayed: bool
    before: float = math.nan


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


class Score(msgspec.Struct, frozen=True, gc=False):
    """A forecast judged by its outcome (stream/scoring.py), field for field its wire form.

    `symbol`, `ts` (event time of the outcome tick), `source` (where that tick was read): the
    tick that scored it. `window_hash`, `price`, `lower`, `upper`, `interval`, `last_price` and
    `model_version` are the scored forecast's own fields (made from the window before). `actual`
    is the outcome price; the errors are in price units: `abs_error` |actual - price|,
    `squared_error`, `persistence_abs_error` |actual - last_price| (the naive forecast's error on
    the same step), `pinball_loss` the mean over the model's quantiles, `hit` whether `actual`
    lies in [lower, upper].
    """

    symbol: str
    ts: int
    horizon: int
    model_version: str
    window_hash: str
    price: float
    lower: float
    upper: float
    interval: float
    last_price: float
    actual: float
    abs_error: float
    squared_error: float
    persistence_abs_error: float
    pinball_loss: float
    hit: bool
    source: Source


_encode_score = msgspec.json.Encoder().encode
_decode_score = msgspec.json.Decoder(Score).decode


def encode_score(s: Score) -> bytes:
    """The wire form of a score; equal scores encode identically (fixed field order)."""
    return _encode_score(s)


def decode_score(data: bytes) -> Score:
    """Parse a score message (tests, readers); raises ValueError if malformed."""
    try:
        return _decode_score(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a score: {exc}") from None


def score_headers(s: Score) -> list[tuple[str, bytes]]:
    return [
        ("model-version", s.model_version.encode()),
        ("source-offset", str(s.source.offset).encode()),
    ]


def forecast_headers(f: Forecast) -> list[tuple[str, bytes]]:
    return [
        ("model-version", f.model_version.encode()),
        ("source-offset", str(f.source.offset).encode()),
    ]

"""Tick decoding and validation, the dead-letter headers, and the forecast codec."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stream.contracts import (
    DEAD_LETTER_KEY_MAX_BYTES,
    REASONS,
    TS_LIMIT,
    Forecast,
    Record,
    Rejected,
    Source,
    Tick,
    Window,
    dead_letter_headers,
    decode_batch,
    decode_forecast,
    encode_forecast,
    encode_tick,
    forecast_headers,
)

MAX = 65_536
_SYMBOL_RE = re.compile(r"[A-Za-z0-9._:/-]{1,32}")


def decode_one(
    value: bytes | None, key: bytes | None = None, max_bytes: int = MAX
) -> Tick | Rejected:
    ticks, rejected = decode_batch([Record("ticks", 3, 42, key, value)], max_bytes)
    assert len(ticks) + len(rejected) == 1
    return ticks[0] if ticks else rejected[0]


def reason(value: bytes | None, key: bytes | None = None, max_bytes: int = MAX) -> str:
    out = decode_one(value, key, max_bytes)
    assert isinstance(out, Rejected), f"{value!r} was accepted"
    assert out.reason in REASONS
    return out.reason


def test_a_valid_tick_decodes_with_its_source_position() -> None:
    out = decode_one(b'{"symbol": "XAUUSD", "price": 1951.45, "ts": 1714559400000}', b"XAUUSD")
    assert out == Tick("XAUUSD", 1951.45, 1714559400000, 3, 42)


def test_integer_price_negative_ts_and_extra_fields_are_valid() -> None:
    out = decode_one(b'{"symbol": "EUR/USD", "price": 2, "ts": -86400000, "venue": [1, {}]}')
    assert out == Tick("EUR/USD", 2.0, -86400000, 3, 42)
    assert isinstance(out.price, float)


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        (None, None, "empty"),
        (b"", None, "empty"),
        (b'{"symbol": "A", "price": 1, "ts": 1, "pad": "' + b"x" * 200 + b'"}', None, "oversize"),
        (b'{"symbol": "\xff\xfe", "price": 1, "ts": 1}', None, "bad_utf8"),
        (b'{"symbol": "A", "price": 1, ', None, "not_json"),
        (b"\xef\xbb\xbf{}", None, "not_json"),
        (b"[1, 2]", None, "not_object"),
        (b'"XAUUSD"', None, "not_object"),
        (b'{"price": 1, "ts": 1}', None, "missing_field"),
        (b'{"symbol": "A", "ts": 1}', None, "missing_field"),
        (b'{"symbol": "A", "price": 1}', None, "missing_field"),
        (b'{"symbol": 7, "price": 1, "ts": 1}', None, "wrong_type"),
        (b'{"symbol": "A", "price": "1.5", "ts": 1}', None, "wrong_type"),
        (b'{"symbol": "A", "price": true, "ts": 1}', None, "wrong_type"),
        (b'{"symbol": "A", "price": 1, "ts": false}', None, "wrong_type"),
        (b'{"symbol": "A", "price": 1, "ts": 1.7e12}', None, "wrong_type"),
        (b'{"symbol": "A", "price": 1, "ts": 1714559400000.0}', None, "wrong_type"),
        (b'{"symbol": "A", "price": null, "ts": 1}', None, "wrong_type"),
        (b'{"symbol": "A", "price": NaN, "ts": 1}', None, "not_finite"),
        (b'{"symbol": "A", "price": Infinity, "ts": 1}', None, "not_finite"),
        (b'{"symbol": "A", "price": -Infinity, "ts": 1}', None, "not_finite"),
        (b'{"symbol": "A", "price": 1e400, "ts": 1}', None, "not_finite"),
        (b'{"symbol": "A", "price": 1, "ts": 1, "other": NaN}', None, "not_finite"),
        (b'{"symbol": "A", "price": 0, "ts": 1}', None, "non_positive_price"),
        (b'{"symbol": "A", "price": -1.5, "ts": 1}', None, "non_positive_price"),
        (b'{"symbol": "", "price": 1, "ts": 1}', None, "bad_symbol"),
        (b'{"symbol": "XAU USD", "price": 1, "ts": 1}', None, "bad_symbol"),
        (b'{"symbol": "A\\n", "price": 1, "ts": 1}', None, "bad_symbol"),
        (b'{"symbol": "\xc3\xa9", "price": 1, "ts": 1}', None, "bad_symbol"),
        (b'{"symbol": "' + b"A" * 33 + b'", "price": 1, "ts": 1}', None, "bad_symbol"),
        (b'{"symbol": "A", "price": 1, "ts": 9007199254740992}', None, "bad_ts"),
        (b'{"symbol": "A", "price": 1, "ts": -9007199254740992}', None, "bad_ts"),
        (b'{"symbol": "A", "price": 1, "ts": 99999999999999999999999}', None, "bad_ts"),
        (b'{"symbol": "A", "price": 1, "ts": 1}', b"B", "key_mismatch"),
        (b'{"symbol": "A", "price": 1, "ts": 1}', b"", "key_mismatch"),
    ],
)
def test_every_rejection_reason(value: bytes | None, key: bytes | None, expected: str) -> None:
    assert reason(value, key, max_bytes=128) == expected


def test_size_limit_is_checked_before_parsing_and_is_inclusive() -> None:
    body = b'{"symbol": "A", "price": 1, "ts": 1}'
    assert isinstance(decode_one(body, max_bytes=len(body)), Tick)
    assert reason(body, max_bytes=len(body) - 1) == "oversize"
    assert reason(b"\xff" * 200, max_bytes=100) == "oversize"  # not bad_utf8: never parsed


def test_ts_limits_are_inclusive_and_32_char_symbols_pass() -> None:
    sym = "A" * 32
    for ts in (TS_LIMIT, -TS_LIMIT):
        out = decode_one(encode_tick(sym, 1.0, ts))
        assert isinstance(out, Tick) and out.ts == ts


def test_rejection_keeps_the_original_message_and_quotes_little_of_it() -> None:
    value = b'{"symbol": "' + b"Z" * 5000 + b'", "price": 1, "ts": 1}'
    [bad] = decode_batch([Record("ticks", 2, 9, b"k", value)], MAX)[1]
    assert (bad.value, bad.key, bad.topic, bad.partition, bad.offset) == (
        value,
        b"k",
        "ticks",
        2,
        9,
    )
    assert bad.reason == "bad_symbol"
    assert "symbol" in bad.detail
    assert len(bad.detail.encode()) < 160


def test_dead_letter_headers() -> None:
    r = Rejected("not_json", "unexpected end", b"{", None, "ticks", 4, 1234)
    assert dead_letter_headers(r) == [
        ("error", b"not_json"),
        ("error.detail", b"unexpected end"),
        ("source.topic", b"ticks"),
        ("source.partition", b"4"),
        ("source.offset", b"1234"),
    ]


def test_a_batch_keeps_input_order_and_splits_good_from_bad() -> None:
    msgs = [
        Record("ticks", 0, 0, None, encode_tick("A", 1.0, 1)),
        Record("ticks", 0, 1, None, b"nope"),
        Record("ticks", 0, 2, None, encode_tick("B", 2.0, 2)),
        Record("ticks", 0, 3, None, None),
    ]
    ticks, rejected = decode_batch(msgs, MAX)
    assert [(t.symbol, t.offset) for t in ticks] == [("A", 0), ("B", 2)]
    assert [(r.reason, r.offset) for r in rejected] == [("not_json", 1), ("empty", 3)]


symbols = st.from_regex(r"[A-Za-z0-9._:/-]{1,32}", fullmatch=True)
prices = st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False)
timestamps = st.integers(min_value=-TS_LIMIT, max_value=TS_LIMIT)


@given(symbol=symbols, price=prices, ts=timestamps, keyed=st.booleans())
def test_valid_ticks_round_trip(symbol: str, price: float, ts: int, keyed: bool) -> None:
    key = symbol.encode() if keyed else None
    out = decode_one(encode_tick(symbol, price, ts), key)
    assert isinstance(out, Tick)
    assert (out.symbol, out.ts) == (symbol, ts)
    assert out.price == price and math.copysign(1, out.price) == 1


@given(
    values=st.lists(st.one_of(st.none(), st.binary(max_size=300)), max_size=20),
    key=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_arbitrary_bytes_never_raise(values: list[bytes | None], key: bytes | None) -> None:
    msgs = [Record("ticks", 0, i, key, v) for i, v in enumerate(values)]
    ticks, rejected = decode_batch(msgs, 256)
    assert len(ticks) + len(rejected) == len(values)
    assert all(r.reason in REASONS for r in rejected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    obj=st.dictionaries(st.sampled_from(["symbol", "price", "ts", "x"]), json_values, max_size=4),
    key=st.one_of(st.none(), st.binary(max_size=10)),
)
def test_arbitrary_json_objects_never_raise(obj: dict[str, object], key: bytes | None) -> None:
    # The stdlib encoder writes NaN/Infinity tokens, which must come out as not_finite.
    import json

    value = json.dumps(obj).encode()
    ticks, rejected = decode_batch([Record("ticks", 0, 0, key, value)], MAX)
    assert len(ticks) + len(rejected) == 1
    if rejected:
        assert rejected[0].reason in REASONS
        assert rejected[0].reason != "not_json"


def make_forecast(**changes: object) -> Forecast:
    base: dict[str, object] = {
        "symbol": "XAUUSD",
        "ts": 1714559400000,
        "horizon": 1,
        "price": 1952.1,
        "lower": 1949.0,
        "upper": 1955.25,
        "interval": 0.8,
        "last_price": 1951.45,
        "model_version": "a1b2c3",
        "window_hash": "0" * 32,
        "cached": False,
        "source": Source("ticks", 2, 77),
        "produced_at": 1714559400123,
    }
    offset = changes.pop("source_offset", None)
    if offset is not None:
        base["source"] = Source("ticks", 2, offset)  # type: ignore[arg-type]
    base.update(changes)
    return Forecast(**base)  # type: ignore[arg-type]


def test_forecast_wire_format_matches_the_design() -> None:
    f = make_forecast()
    obj = orjson.loads(encode_forecast(f))
    assert obj == {
        "symbol": "XAUUSD",
        "ts": 1714559400000,
        "horizon": 1,
        "price": 1952.1,
        "lower": 1949.0,
        "upper": 1955.25,
        "interval": 0.8,
        "last_price": 1951.45,
        "model_version": "a1b2c3",
        "window_hash": "0" * 32,
        "cached": False,
        "source": {"topic": "ticks", "partition": 2, "offset": 77},
        "produced_at": 1714559400123,
    }
    assert forecast_headers(f) == [("model-version", b"a1b2c3"), ("source-offset", b"77")]


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    price=finite,
    lower=finite,
    upper=finite,
    ts=timestamps,
    offset=st.integers(min_value=0, max_value=2**62),
    cached=st.booleans(),
    symbol=symbols,
)
def test_forecast_round_trip(
    price: float, lower: float, upper: float, ts: int, offset: int, cached: bool, symbol: str
) -> None:
    f = make_forecast(
        price=price,
        lower=lower,
        upper=upper,
        ts=ts,
        source_offset=offset,
        cached=cached,
        symbol=symbol,
    )
    assert decode_forecast(encode_forecast(f)) == f


@given(price=finite, produced=st.integers(min_value=0, max_value=2**53), cached=st.booleans())
def test_same_window_encodes_byte_identically_apart_from_cached_and_produced_at(
    price: float, produced: int, cached: bool
) -> None:
    first = make_forecast(price=price)
    again = make_forecast(price=price, cached=cached, produced_at=produced)
    normal = make_forecast(price=price, cached=first.cached, produced_at=first.produced_at)
    assert encode_forecast(normal) == encode_forecast(first)

    def strip(b: bytes) -> dict[str, object]:
        return {k: v for k, v in orjson.loads(b).items() if k not in ("cached", "produced_at")}

    assert strip(encode_forecast(again)) == strip(encode_forecast(first))
    # and the bytes differ only inside those two fields
    assert (
        encode_forecast(again).split(b',"cached"')[0]
        == encode_forecast(first).split(b',"cached"')[0]
    )


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"symbol": "A"}',
        orjson.dumps({**orjson.loads(encode_forecast(make_forecast())), "ts": True}),
    ],
)
def test_decode_forecast_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_forecast(data)


def test_window_holds_a_read_only_view() -> None:
    prices = np.frombuffer(np.arange(1.0, 6.0).tobytes(), dtype=np.float64)
    w = Window(Tick("A", 5.0, 1, 0, 0), prices, replayed=False)
    assert w.prices[-1] == w.tick.price
    assert not w.prices.flags.writeable


absent = st.just(None)  # None here means "leave the field out"
any_json = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2)
)


@given(
    symbol=st.one_of(absent, symbols, st.text(max_size=40), any_json, st.integers()),
    price=st.one_of(
        absent,
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.sampled_from([0, 0.0, -0.0, 1, -1, 5e-324]),
        any_json,
    ),
    ts=st.one_of(
        absent,
        timestamps,
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([TS_LIMIT, TS_LIMIT + 1, -TS_LIMIT - 1, 1.0, 1e300]),
        st.floats(allow_nan=False, allow_infinity=False),
        any_json,
    ),
)
def test_fast_path_agrees_with_the_checks(symbol: object, price: object, ts: object) -> None:
    """decode_batch accepts well-formed ticks without _fields; it must agree with _fields."""
    import json

    from stream.contracts import _fields, _Invalid

    fields = {"symbol": symbol, "price": price, "ts": ts}
    value = json.dumps({k: v for k, v in fields.items() if v is not None}).encode()
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return  # NaN/Infinity: covered by the rejection tests
    ticks, rejected = decode_batch([Record("ticks", 0, 0, None, value)], MAX)
    try:
        symbol, price, ts = _fields(parsed)
    except _Invalid as bad:
        assert [r.reason for r in rejected] == [bad.reason]
    else:
        assert [(t.symbol, t.price, t.ts) for t in ticks] == [(symbol, price, ts)]


_FIELD_CASES = {
    "symbol": ["XAUUSD", "a.b:c/d-e_", "A" * 32, "A" * 33, "", "X Y", "é", 7, None, True, [], ...],
    "price": [1951.45, 1, 5e-324, 0, 0.0, -0.0, -1, -1.5, 2**64, True, False, "1", None, ...],
    "ts": [0, 1714559400000, -1, TS_LIMIT, -TS_LIMIT, TS_LIMIT + 1, -TS_LIMIT - 1, 2**64, 1.0,
           1.7e12, True, "1", None, ...],
}  # fmt: skip


def test_fast_path_agrees_with_the_checks_on_every_combination_of_edge_values() -> None:
    """The cartesian product of edge values per field (`...` leaves the field out)."""
    import itertools
    import json

    from stream.contracts import _fields, _Invalid

    for symbol, price, ts in itertools.product(*_FIELD_CASES.values()):
        fields = {"symbol": symbol, "price": price, "ts": ts}
        obj = {k: v for k, v in fields.items() if v is not ...}
        value = json.dumps(obj).encode()
        ticks, rejected = decode_batch([Record("ticks", 0, 0, None, value)], MAX)
        try:
            expected = _fields(orjson.loads(value))
        except _Invalid as bad:
            assert [r.reason for r in rejected] == [bad.reason], obj
        else:
            assert [(t.symbol, t.price, t.ts) for t in ticks] == [expected], obj


# Issue 15: decoding is total, and what it rejects it names as the contract says.

NESTED_IGNORED = b'{"symbol":"A","price":1.5,"ts":1,"x":' + b"[" * 1000 + b"]" * 1000 + b"}"


def test_a_deeply_nested_ignored_field_does_not_raise() -> None:
    # ~2 KB; raised RecursionError out of decode_batch (msgspec descends on the C stack).
    out = decode_one(NESTED_IGNORED)
    assert out == Tick("A", 1.5, 1, 3, 42)  # 1,001 levels: within the limit, extras are ignored


TICK_HEAD = b'{"symbol":"A","price":1.5,"ts":1,"x":'


@pytest.mark.parametrize("levels", [1024, 1025, 5_000, 100_000])
@pytest.mark.parametrize(
    ("shape", "make"),
    [
        ("lists in a tick", lambda n: TICK_HEAD + b"[" * (n - 1) + b"]" * (n - 1) + b"}"),
        ("objects in a tick", lambda n: TICK_HEAD + b'{"k":' * (n - 1) + b"1" + b"}" * n),
        ("bare lists", lambda n: b"[" * n + b"]" * n),
        ("never closed", lambda n: TICK_HEAD + b"[" * (n - 1)),
    ],
)
def test_nesting_is_limited_to_1024_levels_whatever_the_stack(
    shape: str, make: Callable[[int], bytes], levels: int
) -> None:
    out = decode_one(make(levels), max_bytes=10**7)
    if levels <= 1024:
        expected = {"bare lists": "not_object", "never closed": "not_json"}.get(shape)
        if expected is None:
            assert out == Tick("A", 1.5, 1, 3, 42)
        else:
            assert isinstance(out, Rejected) and out.reason == expected
            assert "nesting" not in out.detail
    else:
        assert isinstance(out, Rejected) and out.reason == "not_json"
        if shape != "never closed":  # truncated: orjson may stop for another reason first
            assert "nesting deeper than 1024 levels" in out.detail


def test_the_depth_limit_holds_with_a_deep_stack_or_a_raised_recursion_limit() -> None:
    import sys

    value = TICK_HEAD + b"[" * 999 + b"]" * 999 + b"}"  # 1,000 levels

    def at_depth(n: int) -> Tick | Rejected:
        return decode_one(value) if n == 0 else at_depth(n - 1)

    assert at_depth(900) == Tick("A", 1.5, 1, 3, 42)
    too_deep = TICK_HEAD + b"[" * 2000 + b"]" * 2000 + b"}"
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        assert reason(too_deep, max_bytes=10**7) == "not_json"
    finally:
        sys.setrecursionlimit(saved)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000,"note":"caf\xe9"}', None),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000,"note":"caf\xe9"}', b"F0008"),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000,"caf\xe9":1}', None),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000,"x":["\xed\xa0\x80"]}', None),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000,"x":{"y":"\xc3"}}', None),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000}', b"F\xe9"),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000}', b"\xff"),
        (b'{"symbol":"F0008","price":1303.6521,"ts":948715200000}', b"\xed\xa0\x80"),
        (b'{"symbol":"F0008","price":"x","ts":948715200000}', b"\xff"),  # the key is read first
        (b"not json", b"\xff"),
    ],
)
def test_invalid_utf8_anywhere_is_bad_utf8(value: bytes, key: bytes | None) -> None:
    # The first two were accepted and forecast.
    assert reason(value, key) == "bad_utf8"


def test_the_key_is_not_read_for_a_tombstone_or_an_oversize_value() -> None:
    assert reason(None, b"\xff") == "empty"
    assert reason(b"{" + b" " * 200 + b"}", b"\xff", max_bytes=100) == "oversize"


@pytest.mark.parametrize(
    "value",
    [
        b'{"symbol":"A","price":' + b"1" * 401 + b',"ts":1}',  # was not_json
        b'{"symbol":"A","price":-' + b"9" * 5000 + b',"ts":1}',
        b'{"symbol":"A","price":' + b"1" * 400 + b'.5,"ts":1}',
        b'{"symbol":"A","price":1.5e309,"ts":1}',
        b'{"symbol":"A","price":1E+400,"ts":1}',
        b'{"symbol":"A","price":1,"ts":' + b"1" * 401 + b"}",
        b'{"symbol":"A","price":1,"ts":1,"x":' + b"1" * 401 + b"}",  # was accepted
        b'{"symbol":"A","price":1,"ts":1,"x":[1e999]}',
        b'{"symbol":"A","price":1,"ts":1,"x":-Infinity}',
        b'{"symbol":"A","price":NaN',  # truncated after the offending number
    ],
)
def test_a_number_beyond_a_double_is_not_finite(value: bytes) -> None:
    assert reason(value) == "not_finite"


def test_long_numbers_that_fit_a_double_are_numbers() -> None:
    value = b'{"symbol":"A","price":1' + b"0" * 400 + b'e-400,"ts":1,"x":' + b"7" * 300 + b"}"
    assert decode_one(value) == Tick("A", 1.0, 1, 3, 42)


def test_the_first_problem_in_the_text_names_the_reason() -> None:
    assert reason(b'{"symbol":"A","price":NaN,"ts":1,}') == "not_finite"
    assert reason(b'{"symbol":"A",,"price":NaN,"ts":1}') == "not_json"


def test_a_tick_too_far_in_the_future_is_future() -> None:
    now = 1_714_559_400_000
    max_ts = now + 86_400_000

    def decode(ts: int, key: bytes | None = None) -> Tick | Rejected:
        value = encode_tick("A", 1.0, ts)
        ticks, rejected = decode_batch([Record("ticks", 0, 7, key, value)], MAX, max_ts=max_ts)
        return [*ticks, *rejected][0]

    assert isinstance(decode(max_ts), Tick)  # the bound is inclusive
    assert isinstance(decode(-TS_LIMIT), Tick)  # the past is a replay, not an error
    far = decode(2**52)  # made every later tick of its symbol late, forever
    assert isinstance(far, Rejected) and far.reason == "future"
    assert str(max_ts) in far.detail
    assert isinstance(decode(max_ts + 1), Rejected)
    assert decode(TS_LIMIT + 1).reason == "bad_ts"  # type: ignore[union-attr]
    assert decode(max_ts + 1, key=b"B").reason == "future"  # type: ignore[union-attr]
    # with extra fields (the full parser's path) too
    value = b'{"symbol":"A","price":1.0,"ts":%d,"venue":"X"}' % (max_ts + 1)
    [bad] = decode_batch([Record("ticks", 0, 7, None, value)], MAX, max_ts=max_ts)[1]
    assert bad.reason == "future"
    # without a bound (None), any representable ts is valid
    assert decode_batch([Record("ticks", 0, 7, None, encode_tick("A", 1.0, TS_LIMIT))], MAX)[0]


def test_a_dead_letter_larger_than_the_bound_is_truncated_with_size_and_digest() -> None:
    import hashlib

    value = b'{"symbol":"A","price":1,"ts":1,"pad":"' + b"x" * 3_000_000 + b'"}'
    key = b"K" * 100_000
    [bad] = decode_batch(
        [Record("ticks", 1, 5, key, value)], 65_536, dead_letter_max_bytes=1_000_000
    )[1]
    assert bad.reason == "oversize"
    assert bad.value == value[:1_000_000]
    assert bad.original_size == len(value)
    assert bad.sha256 == hashlib.sha256(value).hexdigest()
    assert bad.key is not None and len(bad.key) == DEAD_LETTER_KEY_MAX_BYTES
    assert bad.key == key[:DEAD_LETTER_KEY_MAX_BYTES]
    headers = dict(dead_letter_headers(bad))
    assert headers["error.truncated"] == str(len(value)).encode()
    assert headers["source.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["error.key_truncated"] == b"100000"
    assert headers["error"] == b"oversize"
    assert len(headers["error.detail"]) < 160


def test_a_dead_letter_within_the_bound_is_kept_whole() -> None:
    value = b'{"symbol":"A","price":1,"ts":1,"pad":"' + b"x" * 500 + b'"}'
    for bound in (len(value), None):
        [bad] = decode_batch(
            [Record("ticks", 1, 5, b"A", value)], 100, dead_letter_max_bytes=bound
        )[1]
        assert (bad.value, bad.key, bad.original_size, bad.sha256) == (value, b"A", None, None)
        names = [name for name, _ in dead_letter_headers(bad)]
        assert "error.truncated" not in names and "source.sha256" not in names


def test_rejected_can_be_truncated_after_the_fact() -> None:
    r = Rejected("late", "older than the last tick", b"0123456789", b"A", "ticks", 0, 1)
    assert r.truncated(100) is r
    t = r.truncated(4)
    assert (t.value, t.original_size, t.reason, t.offset) == (b"0123", 10, "late", 1)
    assert t.truncated(4) is t  # idempotent: the original size and digest stay


def test_every_detail_is_short_and_every_header_encodes() -> None:
    values = [
        b"\xff" * 10_000,
        b'{"symbol":"' + "é".encode() * 10_000 + b'","price":1,"ts":1}',
        b'{"symbol":"A","price":' + b"9" * 100_000 + b',"ts":1}',
        b'{"symbol":"A","price":1,"ts":1,"x":"\\ud800"}',
        b"[" * 100_000,
    ]
    for value in values:
        for key in (None, b"B" * 100_000, b"\xff" * 100):
            [bad] = decode_batch([Record("ticks", 0, 0, key, value)], 10**7)[1]
            assert len(bad.detail) < 160, bad.detail
            for _, header in dead_letter_headers(bad):
                assert isinstance(header, bytes)


# Property: decode_batch is total. Any bytes, keys and structured near-misses of JSON come out as
# exactly one Tick or one Rejected each, with a reason from REASONS, whatever the batch.

_WS = st.sampled_from([b"", b" ", b"\n", b"\t ", b"\r\n"])
_BAD_UTF8 = st.sampled_from(
    [
        b"\xff",
        b"\xfe",
        b"\x80",
        b"\xc3",
        b"\xe2\x82",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
    ]
)
_big_digits = st.integers(min_value=300, max_value=3_000).map(lambda n: b"9" * n)
_numbers = st.one_of(
    st.integers().map(lambda i: str(i).encode()),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()),
    st.tuples(st.sampled_from([b"", b"-"]), _big_digits, st.sampled_from([b"", b".5", b"e-9999"])).map(
        b"".join
    ),
    st.tuples(st.integers(1, 9), st.integers(-2_000, 2_000)).map(lambda t: b"%de%d" % t),
    st.sampled_from([b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1e309", b"-0", b"01", b"1.", b".5", b"+1", b"0x1F", b"1e", b"-"]),
)  # fmt: skip
_strings = st.one_of(
    st.text(max_size=20).map(lambda s: orjson.dumps(s)),
    st.binary(max_size=20).map(lambda b: b'"' + b.replace(b'"', b"").replace(b"\\", b"") + b'"'),
    st.tuples(st.text(max_size=5).map(orjson.dumps), _BAD_UTF8).map(lambda t: t[0][:-1] + t[1] + b'"'),
    st.sampled_from([b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"', b'"\\x41"', b'"\xed\xa0\x80"']),
)  # fmt: skip
_leaves = st.one_of(st.sampled_from([b"null", b"true", b"false"]), _numbers, _strings)


def _join_list(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _join_object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


_json_near_misses = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_join_list),
        st.lists(st.tuples(_strings, inner), max_size=4).map(_join_object),
    ),
    max_leaves=12,
)
_deep = st.tuples(
    st.integers(min_value=1, max_value=3_000), st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])
).map(lambda t: t[1][0] * t[0] + b"0" + t[1][1] * t[0])


@st.composite
def _tick_like(draw: st.DrawFn) -> bytes:
    """A tick's three fields (each valid or a near miss), maybe an extra one, in any order."""
    symbol = draw(st.one_of(symbols.map(lambda s: orjson.dumps(s)), _strings, _leaves))
    price = draw(st.one_of(prices.map(lambda p: repr(p).encode()), _numbers, _leaves))
    ts = draw(st.one_of(timestamps.map(lambda t: str(t).encode()), _numbers, _leaves))
    fields = [(b'"symbol"', symbol), (b'"price"', price), (b'"ts"', ts)]
    fields = draw(st.lists(st.sampled_from(fields), max_size=4, unique=True))
    extra = draw(st.one_of(st.none(), _json_near_misses, _deep))
    if extra is not None:
        fields.insert(draw(st.integers(0, len(fields))), (draw(_strings), extra))
    ws = draw(_WS)
    body = _join_object(fields).replace(b",", b"," + ws)
    return (
        draw(st.sampled_from([b"", b" "])) + body + draw(st.sampled_from([b"", b"\n", b" x", b"}"]))
    )


@st.composite
def _mutated_tick(draw: st.DrawFn) -> bytes:
    """A valid tick, then truncated, or with bytes flipped, inserted or deleted."""
    value = encode_tick(draw(symbols), draw(prices), draw(timestamps))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(value)))
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        if op == "cut":
            value = value[:i]
        elif op == "flip" and i < len(value):
            value = value[:i] + bytes([draw(st.integers(0, 255))]) + value[i + 1 :]
        elif op == "insert":
            value = (
                value[:i] + draw(st.one_of(_BAD_UTF8, _leaves, st.binary(max_size=3))) + value[i:]
            )
        else:
            value = value[:i] + value[i + 1 :]
    return value


_values = st.one_of(
    st.none(),
    st.binary(max_size=400),
    _json_near_misses,
    _deep,
    _tick_like(),
    _mutated_tick(),
    symbols.map(lambda s: encode_tick(s, 1.0, 1)),
)
_keys = st.one_of(
    st.none(),
    st.binary(max_size=40),
    symbols.map(str.encode),
    st.just(b"A"),
    _BAD_UTF8,
    st.binary(min_size=2_000, max_size=3_000),
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    batch=st.lists(st.tuples(_keys, _values), max_size=12),
    max_bytes=st.sampled_from([64, 256, 8_192, MAX]),
    max_ts=st.one_of(st.none(), timestamps),
    dead_letter_max_bytes=st.one_of(st.none(), st.integers(1, 5_000)),
)
def test_decoding_is_total_and_every_message_comes_out_once(
    batch: list[tuple[bytes | None, bytes | None]],
    max_bytes: int,
    max_ts: int | None,
    dead_letter_max_bytes: int | None,
) -> None:
    records = [Record("ticks", 1, i, key, value) for i, (key, value) in enumerate(batch)]
    options = {"max_ts": max_ts, "dead_letter_max_bytes": dead_letter_max_bytes}
    ticks, rejected = decode_batch(records, max_bytes, **options)
    assert sorted([t.offset for t in ticks] + [r.offset for r in rejected]) == list(
        range(len(batch))
    )
    for tick in ticks:  # what is accepted keeps every promise of a Tick
        key, value = batch[tick.offset]
        assert value is not None and 0 < len(value) <= max_bytes and _is_utf8(value)
        assert _SYMBOL_RE.fullmatch(tick.symbol) and key in (None, tick.symbol.encode())
        assert 0 < tick.price < math.inf and -TS_LIMIT <= tick.ts <= TS_LIMIT
        assert max_ts is None or tick.ts <= max_ts
    for r in rejected:
        key, value = batch[r.offset]
        assert r.reason in REASONS
        assert len(r.detail) < 160
        assert all(isinstance(h, bytes) for _, h in dead_letter_headers(r))
        bad_bytes = not _is_utf8(value or b"") or not _is_utf8(key or b"")
        if value and len(value) <= max_bytes:
            assert (r.reason == "bad_utf8") == bad_bytes, (r, key)
        assert r.key is None or len(r.key) <= DEAD_LETTER_KEY_MAX_BYTES
        if dead_letter_max_bytes is not None and value is not None:
            assert r.value == value[:dead_letter_max_bytes]
            assert (r.original_size is not None) == (len(value) > dead_letter_max_bytes)
        else:
            assert r.value == value
    # Each message is judged on its own: one at a time gives the same answer.
    for i, record in enumerate(records):
        alone_ticks, alone_rejected = decode_batch([record], max_bytes, **options)
        assert alone_ticks == [t for t in ticks if t.offset == i]
        assert alone_rejected == [r for r in rejected if r.offset == i]


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(_tick_like(), _json_near_misses), bad=_BAD_UTF8, where=st.integers(0, 10**6))
def test_invalid_utf8_anywhere_in_a_near_miss_is_bad_utf8(
    value: bytes, bad: bytes, where: int
) -> None:
    i = where % (len(value) + 1)
    spliced = value[:i] + bad + value[i:]
    # A stray continuation byte after a lone lead byte can complete a valid character.
    assume(not _is_utf8(spliced))
    assert reason(spliced) == "bad_utf8"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

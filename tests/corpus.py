"""A corpus of malformed tick messages, each with the reason decode_batch must give it.

`malformed(n, seed)` returns at least n `(key, value, reason)` triples, the same for the same
arguments. Each reason is known by construction (never by asking the decoder), so a unit test can
hold decode_batch to it, and a fault test can mix the corpus into valid ticks and find every entry
in the dead-letter topic with its reason (tests/unit/test_corpus.py).

The kinds, by the reason they must get (stream/contracts.py lists the reasons and their order):

    empty               tombstones and b"", with any key
    oversize            a valid tick padded, random bytes, a deep document: just over the limit,
                        and a few up to `max_oversize_bytes` (several MB by default)
    bad_utf8            invalid UTF-8 (stray bytes, truncated and overlong sequences, encoded
                        surrogates, beyond U+10FFFF) in the symbol, a field name, an ignored
                        field, between tokens, at either end, in random bytes, or in the key
    not_json            garbage, truncated ticks, syntax errors of every sort, lone surrogate
                        escapes, a document nested deeper than 1024 levels
    not_finite          NaN, Infinity and numbers beyond a double in any field, ignored ones too
    not_object          every other JSON shape: scalars, strings, arrays, arrays of ticks
    missing_field       symbol, price or ts absent (or spelt otherwise)
    wrong_type          each field as every wrong JSON type; ts as a float
    bad_symbol          empty, too long, spaces, punctuation, non-ASCII, control characters
    non_positive_price  zero, negative zero, negatives, a number that underflows to zero
    bad_ts              integers and integral floats beyond +-(2**53 - 1)
    future              ts beyond `now_ms + max_future_ms` by a day or more (only given now_ms)
    key_mismatch        a valid tick under another key: other symbols, empty, huge, non-ASCII

Values other than `oversize` fit `max_message_bytes`. Valid parts use event times at or before
`now_ms` (when given), so only a `future` entry is in the future.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from stream.contracts import TS_LIMIT

Entry = tuple[bytes | None, bytes | None, str]

_SYMBOL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-"
_BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",  # a continuation byte alone
    b"\xbf\xbf",
    b"\xc3",  # a lead byte without its continuation
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xf8\x88\x80\x80\x80",
    b"caf\xe9",  # Latin-1
]
_WHITESPACE = [b"", b"", b" ", b"\n", b"\t", b"\r\n", b"  "]


class _Builder:
    """The pieces of well-formed and malformed ticks, from one seeded random generator."""

    def __init__(self, rng: random.Random, max_bytes: int, now_ms: int | None) -> None:
        self.rng = rng
        self.max_bytes = max_bytes
        self.latest_ts = 1_700_000_000_000 if now_ms is None else min(now_ms, 1_700_000_000_000)

    # valid parts

    def symbol(self) -> str:
        n = self.rng.choice([1, 3, 6, 6, 7, 12, 32])
        return "".join(self.rng.choice(_SYMBOL_CHARS) for _ in range(n))

    def price(self) -> bytes:
        r = self.rng.random()
        if r < 0.6:
            return repr(
                round(self.rng.uniform(0.0001, 100_000), self.rng.randint(0, 8)) or 1.0
            ).encode()
        if r < 0.8:
            return str(self.rng.randint(1, 10**9)).encode()
        return self.rng.choice([b"5e-324", b"1.7976931348623157e308", b"1e-300", b"1E3", b"2.5e+2"])

    def ts(self) -> bytes:
        if self.rng.random() < 0.1:
            return str(self.rng.choice([0, -1, -TS_LIMIT, self.latest_ts])).encode()
        return str(self.rng.randint(-(10**12), self.latest_ts)).encode()

    def ws(self) -> bytes:
        return self.rng.choice(_WHITESPACE)

    def name(self) -> bytes:
        """An ignored field's name."""
        return orjson.dumps(self.rng.choice(["x", "venue", "note", "bid", "ask", "é", "", "a b"]))

    def clean(self, depth: int = 3) -> bytes:
        """Any valid JSON value with finite numbers and valid strings."""
        r = self.rng.random()
        if depth <= 0 or r < 0.5:
            return self.rng.choice(
                [
                    b"null",
                    b"true",
                    b"false",
                    str(self.rng.randint(-(2**63), 2**64 - 1)).encode(),
                    repr(self.rng.uniform(-1e9, 1e9)).encode(),
                    orjson.dumps(self.text()),
                    b"1e308",
                    b"-0.0",
                    b"1" * 300,
                ]
            )
        items = [self.clean(depth - 1) for _ in range(self.rng.randint(0, 3))]
        if r < 0.75:
            return b"[" + b",".join(items) + b"]"
        return b"{" + b",".join(self.name() + b":" + v for v in items) + b"}"

    def text(self) -> str:
        alphabet = 'abcXYZ 019"\\/\n\t\u00e9\u4e2d\U0001f600\u2028\x00'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 12)))

    def obj(self, fields: list[tuple[bytes, bytes]], extras: int | None = None) -> bytes:
        """A JSON object of `fields` (name, value), shuffled, with ignored fields mixed in."""
        pairs = list(fields)
        for _ in range(self.rng.choice([0, 0, 1, 2]) if extras is None else extras):
            pairs.insert(self.rng.randint(0, len(pairs)), (self.name(), self.clean()))
        self.rng.shuffle(pairs)
        ws = self.ws
        body = b",".join(ws() + k + ws() + b":" + ws() + v + ws() for k, v in pairs)
        return b"{" + body + b"}"

    def tick(self, **override: bytes | None) -> tuple[bytes, str]:
        """A tick object with fields replaced (None: left out), and its symbol."""
        symbol = self.symbol()
        fields = {b'"symbol"': orjson.dumps(symbol), b'"price"': self.price(), b'"ts"': self.ts()}
        for name, value in override.items():
            fields[b'"' + name.encode() + b'"'] = value  # type: ignore[assignment]
        present = [(k, v) for k, v in fields.items() if v is not None]
        return self.obj(present), symbol

    def key_for(self, symbol: str | None) -> bytes | None:
        """A key that does not change the reason of a value that is not a valid tick."""
        return self.rng.choice([None, None, b"", b"XAUUSD", (symbol or "S").encode()])


def _empty(b: _Builder) -> Entry:
    key = b.rng.choice([None, b"XAUUSD", b"\xff\xfe", b""])
    return key, b.rng.choice([None, b""]), "empty"


def _bad_utf8(b: _Builder) -> Entry:
    rng, bad = b.rng, b.rng.choice(_BAD_UTF8)
    where = rng.randrange(9)
    symbol = b.symbol()
    if where == 0:  # inside the symbol
        value = b.obj(
            [
                (b'"symbol"', b'"' + symbol.encode() + bad + b'"'),
                (b'"price"', b.price()),
                (b'"ts"', b.ts()),
            ]
        )
    elif where == 1:  # in a field name
        value = b.obj(
            [
                (b'"symbol"', orjson.dumps(symbol)),
                (b'"price"', b.price()),
                (b'"ts"', b.ts()),
                (b'"n' + bad + b'"', b"1"),
            ]
        )
    elif where == 2:  # in an ignored field, the case that was accepted
        value = b.obj(
            [
                (b'"symbol"', orjson.dumps(symbol)),
                (b'"price"', b.price()),
                (b'"ts"', b.ts()),
                (b'"note"', b'"' + bad + b'"'),
            ],
            extras=0,
        )
    elif where == 3:  # deep inside an ignored field
        d = rng.randint(1, 900)
        value = b.obj(
            [
                (b'"symbol"', orjson.dumps(symbol)),
                (b'"price"', b.price()),
                (b'"ts"', b.ts()),
                (b'"x"', b"[" * d + b'"' + bad + b'"' + b"]" * d),
            ]
        )
    elif where == 4:  # between tokens or at either end
        good, symbol = b.tick()
        i = rng.choice([0, len(good), rng.randint(0, len(good))])
        value = good[:i] + bad + good[i:]
    elif where == 5:  # random bytes with at least one bad sequence
        noise = rng.randbytes(rng.randint(0, 200))
        i = rng.randint(0, len(noise))
        value = noise[:i] + bad + noise[i:]
    elif where == 6:  # a valid tick under a key that is not UTF-8
        value, _ = b.tick()
        return _still_bad(rng.choice(_BAD_UTF8) + symbol.encode()), value, "bad_utf8"
    elif where == 7:  # not JSON either: the UTF-8 check comes first
        value = b"{'symbol': " + bad + b"}"
    else:  # after a syntax error: still bad_utf8
        value = b'{"symbol":,,"' + bad + b'"}'
    return b.key_for(symbol), _still_bad(value), "bad_utf8"


def _still_bad(data: bytes) -> bytes:
    """`data`, made sure to be invalid UTF-8: random neighbours can complete a cut sequence."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return data + b"\xff"


_SYNTAX = [
    b"{'symbol': 'A', 'price': 1, 'ts': 1}",
    b'{symbol: "A", price: 1, ts: 1}',
    b'{"symbol": "A", "price": 1, "ts": 1,}',
    b'{"symbol": "A" "price": 1, "ts": 1}',
    b'{"symbol": "A", "price" 1, "ts": 1}',
    b'{"symbol": "A", "price": 1, "ts": 1}}',
    b'{"symbol": "A", "price": 1, "ts": 1}{"symbol": "B", "price": 1, "ts": 1}',
    b'{"symbol": "A", "price": 1, "ts": 1} x',
    b'{"symbol": "A", "price": 1, "ts": 1} // comment',
    b'/* c */ {"symbol": "A", "price": 1, "ts": 1}',
    b'\xef\xbb\xbf{"symbol": "A", "price": 1, "ts": 1}',  # a byte-order mark
    b'{"symbol": "A", "price": 01, "ts": 1}',
    b'{"symbol": "A", "price": .5, "ts": 1}',
    b'{"symbol": "A", "price": 1., "ts": 1}',
    b'{"symbol": "A", "price": +1, "ts": 1}',
    b'{"symbol": "A", "price": 0x1F, "ts": 1}',
    b'{"symbol": "A", "price": 1e, "ts": 1}',
    b'{"symbol": "A", "price": -, "ts": 1}',
    b'{"symbol": "A", "price": nan, "ts": 1}',
    b'{"symbol": "A", "price": inf, "ts": 1}',
    b'{"symbol": "A", "price": None, "ts": 1}',
    b'{"symbol": "A", "price": True, "ts": 1}',
    b'{"symbol": "A\x01", "price": 1, "ts": 1}',  # a raw control character in a string
    b'{"symbol": "A\\q", "price": 1, "ts": 1}',  # an invalid escape
    b'{"symbol": "A\\u12", "price": 1, "ts": 1}',
    b'{"symbol": "\\ud800", "price": 1, "ts": 1}',  # a lone surrogate escape
    b'{"symbol": "A", "price": 1, "ts": 1, "x": "\\udc00"}',
    b'{"symbol": "A", "price": 1, "ts": 1, "x": "\\ud83d\\u0041"}',
    b'{"symbol": "A", "price": 1, "ts": 1, "x": [1, 2}',
    b'{"symbol": "A", "price": 1, "ts": 1, "x": {"a"}}',
    b'{"symbol": "A", "price": 1, "ts": 1, "x": undefined}',
    b'{"symbol": "A", "price": 1, "ts": 1, "x": "unterminated}',
    b'{"symbol": "A", "price": 1, "ts": 1, 7: 1}',
    b'{"symbol": "A", "price": 1, "ts": 1, null: 1}',
    b"{",
    b"}",
    b"[",
    b'"',
    b"tru",
    b"nul",
    b" ",
    b"\n\t ",
    b"\x00",
    b"symbol=A,price=1,ts=1",
    b"A,1951.45,1714559400000",
    b"<tick symbol='A'/>",
]


def _not_json(b: _Builder) -> Entry:
    rng = b.rng
    kind = rng.randrange(5)
    if kind == 0:
        value = rng.choice(_SYNTAX)
    elif kind == 1:  # a valid tick cut short, between characters (else it is bad_utf8)
        good, symbol = b.tick()
        text = good.decode()
        return b.key_for(symbol), text[: rng.randint(1, len(text) - 1)].encode(), "not_json"
    elif kind == 2:  # text that no JSON value starts with
        start = rng.choice("@#$%&*;:<>?!=~`'^|abceghijkmopqrsuvwxyzABCDEFGHJKLMOPQRSTUVWXYZ_)]}")
        tail = "".join(
            rng.choice(' ,:{}[]"0123456789abcxyz\u00e9') for _ in range(rng.randint(0, 60))
        )
        value = (start + tail).encode()
    elif kind == 3:  # nested deeper than 1024 levels, in a tick or bare
        depth = rng.randint(1025, max(1025, min(b.max_bytes // 6, 20_000)))
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        deep = opener * depth + b"0" + closer * depth
        if rng.random() < 0.5:
            value = deep
        else:
            good, _ = b.tick()
            value = good[:-1] + b',"x":' + deep + b"}"
        if len(value) > b.max_bytes:
            value = b"[" * 1025 + b"]" * 1025
    else:  # a syntax error after a long valid prefix
        value = b'{"symbol":"A","x":' + b.clean(4) + b", ]}"
    return b.key_for(None), value, "not_json"


_NON_FINITE = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e309",
    b"-1e309",
    b"1E+400",
    b"2.5e999",
    b"-1e99999",
]


def _not_finite(b: _Builder) -> Entry:
    rng = b.rng
    r = rng.random()
    if r < 0.6:
        token = rng.choice(_NON_FINITE)
    elif r < 0.9:  # an integer beyond a double, maybe with a fraction
        token = (
            rng.choice([b"", b"-"])
            + b"1"
            + b"0" * rng.randint(309, 3_000)
            + rng.choice([b"", b".5", b"e1"])
        )
    else:
        token = b"0." + b"1" * rng.randint(1, 50) + b"e" + str(rng.randint(310, 10**6)).encode()
    where = rng.choice(["price", "ts", "symbol", "extra", "nested"])
    if where in ("price", "ts", "symbol"):
        value, symbol = b.tick(**{where: token})
    else:
        holder = token if where == "extra" else b'[1, {"a": [' + token + b"]}]"
        good, symbol = b.tick()
        value = good[:-1] + b', "x": ' + holder + b"}"
    return b.key_for(symbol), value, "not_finite"


def _not_object(b: _Builder) -> Entry:
    rng = b.rng
    good, symbol = b.tick()
    value = rng.choice(
        [
            b.clean(0),
            b"[" + good + b"]",
            b"[" + b",".join([good] * rng.randint(2, 5)) + b"]",
            orjson.dumps(good.decode()),
            orjson.dumps(symbol),
            b"[]",
            b"[[[[]]]]",
            b"null",
            b"-0",
            b"1714559400000",
            b'""',
            b" true ",
            b"[" * 1024 + b"]" * 1024,  # as deep as allowed
        ]
    )
    if value.lstrip()[:1] == b"{":
        value = b"[" + value + b"]"
    return b.key_for(symbol), value, "not_object"


def _missing_field(b: _Builder) -> Entry:
    rng = b.rng
    missing = rng.choice(["symbol", "price", "ts", "all", "case"])
    if missing == "all":
        value = b.obj([], extras=rng.randint(0, 3))
        symbol = None
    elif missing == "case":
        symbol = b.symbol()
        value = b.obj(
            [(b'"Symbol"', orjson.dumps(symbol)), (b'"price"', b.price()), (b'"ts"', b.ts())]
        )
    else:
        # Fields are checked symbol, price, ts: the ones before the missing one are valid, the
        # ones after it may be anything.
        later = {"symbol": ["price", "ts"], "price": ["ts"], "ts": []}[missing]
        override: dict[str, bytes | None] = {missing: None}
        for name in later:
            if rng.random() < 0.3:
                override[name] = rng.choice([b'"x"', b"null", b"true", b"-1"])
        value, symbol = b.tick(**override)
    return b.key_for(symbol), value, "missing_field"


def _wrong_type(b: _Builder) -> Entry:
    rng = b.rng
    field = rng.choice(["symbol", "price", "ts", "ts"])
    others = [b"null", b"true", b"false", b"[]", b"{}", b'["A"]', b'{"v": 1}']
    if field == "symbol":
        bad = rng.choice([*others, b"7", b"1.5", b"-0"])
    elif field == "price":
        bad = rng.choice([*others, b'"1951.45"', b'""', b'"NaN"'])
    else:
        bad = rng.choice(
            [
                *others,
                b'"1714559400000"',
                b"1.5",
                b"1714559400000.0",
                b"1.7145594e12",
                b"-0.0",
                b"1e-3",
                b"9007199254740991.0",
            ]
        )
    value, symbol = b.tick(**{field: bad})
    return b.key_for(symbol), value, "wrong_type"


_BAD_SYMBOLS = ["", " ", "XAU USD", "A\n", "A\u0000", "\u00e9", "\u4e2d", "\U0001f600", "A,B", "A;B", "A#", "A\u2028", "A\\B", "A*", '"']  # fmt: skip


def _bad_symbol(b: _Builder) -> Entry:
    rng = b.rng
    r = rng.random()
    if r < 0.4:
        symbol = rng.choice(_BAD_SYMBOLS)
    elif r < 0.7:
        symbol = "".join(rng.choice(_SYMBOL_CHARS) for _ in range(rng.choice([33, 34, 64, 1000])))
    else:
        good = b.symbol()
        i = rng.randint(0, len(good))
        symbol = good[:i] + rng.choice(_BAD_SYMBOLS[1:]) + good[i:]
    value, _ = b.tick(symbol=orjson.dumps(symbol))
    return rng.choice([None, symbol.encode()]), value, "bad_symbol"


def _non_positive_price(b: _Builder) -> Entry:
    bad = b.rng.choice([b"0", b"-0", b"0.0", b"-0.0", b"-1", b"-1951.45", b"-5e-324", b"-1.7976931348623157e308", b"1e-400", b"-1e-400", b"0e10"])  # fmt: skip
    value, symbol = b.tick(price=bad)
    return b.key_for(symbol), value, "non_positive_price"


def _bad_ts(b: _Builder) -> Entry:
    rng = b.rng
    magnitude = rng.choice(
        [
            str(TS_LIMIT + 1).encode(),
            str(rng.randint(TS_LIMIT + 1, 2**64)).encode(),
            str(2**64).encode(),
            b"9" * rng.randint(20, 300),
            b"1e16",
            b"1e300",
            b"9007199254740992.0",
        ]
    )
    value, symbol = b.tick(ts=rng.choice([b"", b"-"]) + magnitude)
    return b.key_for(symbol), value, "bad_ts"


def _future(b: _Builder, earliest: int) -> Entry:
    ts = b.rng.choice([earliest, b.rng.randint(earliest, TS_LIMIT), TS_LIMIT, 2**52])
    value, symbol = b.tick(ts=str(max(ts, earliest)).encode())
    return b.rng.choice([None, symbol.encode()]), value, "future"


def _key_mismatch(b: _Builder) -> Entry:
    rng = b.rng
    value, symbol = b.tick()
    key = rng.choice(
        [
            b"",
            symbol.lower().encode() + b"x",
            symbol.encode() + b" ",
            b" " + symbol.encode(),
            symbol.encode() + b"\x00",
            "\u00e9".encode(),
            b"K" * rng.randint(33, 200_000),  # huge: cut in the dead letter
        ]
    )
    if key == symbol.encode():
        key += b"x"
    return key, value, "key_mismatch"


def _oversize(b: _Builder, size: int) -> Entry:
    rng = b.rng
    good, symbol = b.tick()
    kind = rng.randrange(4)
    if kind == 0:
        value = good[:-1] + b', "pad": "' + b"x" * size + b'"}'
    elif kind == 1:
        value = rng.randbytes(size)
    elif kind == 2:
        value = b"[" * size
    else:
        value = b"\xff" * size  # not UTF-8 either: the size is checked first
    key = rng.choice([None, symbol.encode(), b"\xff"])
    return key, value[:size], "oversize"


_KINDS: list[tuple[Callable[[_Builder], Entry], int]] = [
    (_empty, 2),
    (_bad_utf8, 12),
    (_not_json, 12),
    (_not_finite, 10),
    (_not_object, 6),
    (_missing_field, 8),
    (_wrong_type, 10),
    (_bad_symbol, 8),
    (_non_positive_price, 6),
    (_bad_ts, 6),
    (_key_mismatch, 6),
]


def malformed(
    n: int,
    seed: int,
    *,
    max_message_bytes: int = 65_536,
    max_oversize_bytes: int = 4 * 1024 * 1024,
    huge: int = 3,
    now_ms: int | None = None,
    max_future_ms: int = 86_400_000,
) -> list[Entry]:
    """At least n malformed messages `(key, value, expected reason)`, the same for the same args.

    `max_message_bytes`: the decoder's limit (what is above it is `oversize`).
    `max_oversize_bytes`: the largest oversize value; `huge` of them are between 1 MB and it,
    the other oversize ones just over the limit (keep it under what the broker accepts when
    the corpus is produced to Kafka).
    `now_ms`: the consumer's clock, at most, when the corpus is generated; with it the corpus has
    `future` entries, at least a day beyond `now_ms + max_future_ms` so they stay in the future
    for as long as a test runs. Without it, none.
    """
    if max_message_bytes < 64:
        raise ValueError("max_message_bytes must be at least 64")
    rng = random.Random(seed)
    b = _Builder(rng, max_message_bytes, now_ms)
    kinds = list(_KINDS)
    if now_ms is not None:
        earliest = now_ms + max_future_ms + 86_400_000
        if earliest <= TS_LIMIT:
            kinds.append((lambda b: _future(b, earliest), 6))
    generators = [kind for kind, _ in kinds]
    weights = [weight for _, weight in kinds]

    out: list[Entry] = []
    # A few huge values, spread through the corpus, and about 1 % just over the limit.
    big = max_oversize_bytes > max(1_048_576, max_message_bytes)
    huge_at = set(rng.sample(range(n), min(huge, n))) if big and n > 0 else set()
    while len(out) < n:
        if len(out) in huge_at:
            size = rng.randint(max(1_048_576, max_message_bytes + 1), max_oversize_bytes)
            out.append(_oversize(b, size))
        elif rng.random() < 0.01:
            size = max_message_bytes + rng.choice([1, 2, rng.randint(1, 1024)])
            out.append(_oversize(b, min(size, max(max_oversize_bytes, max_message_bytes + 1))))
        else:
            key, value, reason = rng.choices(generators, weights)[0](b)
            if value is None or len(value) <= max_message_bytes:  # a small limit skips some
                out.append((key, value, reason))
    return out

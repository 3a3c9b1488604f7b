"""Scorer.score_many (a batch's scores column by column, issue 14) against Scorer.score_prices,
the per-forecast reference: the same Scores, bit for bit, for any prices (overflowing errors,
non-finite quantile prices, outcomes on the interval's bounds), in the same order."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stream.contracts import Score, Source
from stream.predictor import quantile_columns
from stream.scoring import Scorer

prices_st = st.one_of(
    st.floats(1e-3, 1e4),
    st.floats(min_value=5e-324, max_value=1.7e308),
    st.sampled_from([math.nan, math.inf, 100.0, 101.0]),
)


@st.composite
def forecasts(draw: st.DrawFn, n_q: int) -> tuple[list[float], float, float]:
    prices = draw(st.lists(prices_st, min_size=n_q, max_size=n_q))
    last = draw(st.floats(1e-3, 1e6))
    # outcomes at a quantile price exercise the interval's bounds and a zero error
    actual = draw(st.one_of(st.floats(1e-3, 1.7e308), st.sampled_from(prices)))
    return prices, last, actual if math.isfinite(actual) and actual > 0 else last


@given(
    data=st.data(),
    quantiles=st.sampled_from([(0.1, 0.5, 0.9), (0.05, 0.1, 0.5, 0.9, 0.95), (0.5,)]),
)
def test_score_many_is_score_prices_for_each(
    data: st.DataObject, quantiles: tuple[float, ...]
) -> None:
    batch = data.draw(st.lists(forecasts(len(quantiles)), max_size=20))
    # (0.5,): a median alone, its interval degenerate; the Scorer takes any columns it is given
    columns = (0, 0, 0) if quantiles == (0.5,) else quantile_columns(quantiles, 0.8)
    scorer = Scorer(quantiles, columns, 1, 0.8, "m1")
    sources = [Source("ticks", i % 3, i) for i in range(len(batch))]
    expected: list[Score] = []
    for i, (prices, last, actual) in enumerate(batch):
        s = scorer.score_prices(prices, last, actual, f"S{i}", i, f"h{i}", sources[i])
        if s is not None:
            expected.append(s)
    got = scorer.score_many(
        [p for p, _, _ in batch],
        [lp for _, lp, _ in batch],
        [a for _, _, a in batch],
        [f"S{i}" for i in range(len(batch))],
        list(range(len(batch))),
        [f"h{i}" for i in range(len(batch))],
        sources,
    )
    # bit for bit: compare the floats' hex forms (inf included; no NaN is ever scored)
    assert [_bits(s) for s in got] == [_bits(s) for s in expected]
    assert got == expected


def _bits(s: Score) -> tuple[object, ...]:
    return tuple(v.hex() if isinstance(v, float) else v for v in _fields(s))


def _fields(s: Score) -> tuple[object, ...]:
    return tuple(getattr(s, name) for name in s.__struct_fields__)

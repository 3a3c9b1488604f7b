"""Pipeline.finish prices each window's output once and shares it between the window's forecast
and the next tick's score (issue 14): held equal, bit for bit, to the reference functions each
used before, `forecast_values` for a forecast and `Scorer.score` for a score, whatever the outputs
(absurd log returns that overflow, NaN, infinities, more quantiles than the interval's two)."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.contracts import Record, Source, encode_tick
from stream.pipeline import BatchResult, Pipeline, forecast_values
from stream.predictor import quantile_columns
from stream.scoring import Scorer, quantile_prices
from tests.fakes import FakeCache, FakeStore, W

F64 = npt.NDArray[np.float64]
MAX = 65_536

#: log returns: ordinary ones, ones whose exp overflows or underflows, and non-finite ones
log_returns = st.one_of(
    st.floats(-0.05, 0.05),
    st.floats(-800.0, 800.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 709.9, -745.2]),
)


class TableModel:
    """Outputs drawn by the test: the window's row is picked by its last price, so a window
    gives the same output in whatever batch it comes (as the real model's do)."""

    version = "m1"
    horizon = 1
    interval = 0.8

    def __init__(self, quantiles: tuple[float, ...], rows: list[list[float]]) -> None:
        self.quantiles = quantiles
        self.rows = rows

    def predict_batch(self, windows: F64) -> F64:
        return np.asarray(
            [self.rows[int(w[-1]) % len(self.rows)] for w in windows], dtype=np.float64
        )


def run(model: TableModel, symbols: int, ticks: int) -> list[BatchResult]:
    p = Pipeline(
        FakeStore(before=True), FakeCache(), model, "ticks", clock_ms=lambda: 1_700_000_000_000
    )
    records = [
        Record(
            "ticks",
            0,
            o,
            f"S{o % symbols}".encode(),
            encode_tick(f"S{o % symbols}", 100.0 + o, 1000 + o),
        )
        for o in range(ticks)
    ]
    # batches of uneven sizes: windows before come from the batch, the one before, or the cache
    return [p.process(records[i : i + 7], MAX) for i in range(0, ticks, 7)]


@settings(max_examples=60, deadline=None)
@given(
    quantiles=st.sampled_from([(0.1, 0.5, 0.9), (0.05, 0.1, 0.5, 0.9, 0.95)]),
    data=st.data(),
    symbols=st.integers(1, 3),
)
def test_forecasts_and_scores_equal_the_reference_functions(
    quantiles: tuple[float, ...], data: st.DataObject, symbols: int
) -> None:
    rows = data.draw(
        st.lists(
            st.lists(log_returns, min_size=len(quantiles), max_size=len(quantiles)),
            min_size=1,
            max_size=5,
        )
    )
    model = TableModel(quantiles, rows)
    columns = quantile_columns(quantiles, 0.8)
    reference = Scorer(quantiles, columns, 1, 0.8, "m1")
    ticks = W * symbols + 20
    results = run(model, symbols, ticks)

    def row_of(last: float) -> F64:
        return np.asarray(model.rows[int(last) % len(rows)], dtype=np.float64)

    def output(last: float) -> bool:  # the pipeline keeps only wholly finite outputs
        return bool(np.isfinite(row_of(last)).all())

    # tick o: symbol S{o % symbols}, price 100 + o; its window is full from its W-th tick on
    expected_forecasts = {}
    expected_scores = {}
    for o in range(W * symbols - symbols, ticks):
        last = 100.0 + o
        values = forecast_values(last, row_of(last), columns) if output(last) else None
        if values is not None:
            expected_forecasts[o] = values
        # the window before is full too (and finite): this tick scores its forecast
        if o >= W * symbols and output(last - symbols):
            before = last - symbols
            s = reference.score(
                row_of(before), before, last, f"S{o % symbols}", 1000 + o, "", Source("t", 0, o)
            )
            if s is not None:
                expected_scores[o] = s
    forecasts = {f.source.offset: f for r in results for f in r.forecasts}
    assert {o: (f.price, f.lower, f.upper) for o, f in forecasts.items()} == expected_forecasts
    scores = {s.source.offset: s for r in results for s in r.scores}
    assert scores.keys() == expected_scores.keys()
    for o, s in scores.items():
        assert s == msgspec.structs.replace(
            expected_scores[o], window_hash=s.window_hash, source=s.source
        )
        if o in forecasts:  # the score shares its tick's forecast's Source
            assert s.source == forecasts[o].source
    assert sum(r.non_finite for r in results) == ticks - (W * symbols - symbols) - len(forecasts)


@given(
    last=st.floats(1e-6, 1e9),
    actual=st.floats(1e-6, 1e9),
    row=st.lists(log_returns, min_size=3, max_size=3),
)
def test_score_prices_is_score(last: float, actual: float, row: list[float]) -> None:
    scorer = Scorer((0.1, 0.5, 0.9), (0, 1, 2), 1, 0.8, "m")
    source = Source("t", 0, 1)
    arr = np.asarray(row, dtype=np.float64)
    prices = quantile_prices(last, arr)
    expected = scorer.score(arr, last, actual, "A", 1, "h", source)
    if prices is None:
        assert expected is None
    else:
        # bit for bit (NaN included): the product forecast_values computes
        assert [p.hex() for p in prices] == [(last * math.exp(r)).hex() for r in row]
        assert scorer.score_prices(prices, last, actual, "A", 1, "h", source) == expected

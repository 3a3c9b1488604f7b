"""Live scoring (stream/scoring.py): the math against hand-computed values and properties, and the
pipeline's scores against the forecasts it published, with the in-memory fakes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.contracts import (
    Record,
    Score,
    Source,
    Tick,
    Window,
    decode_score,
    encode_score,
    encode_tick,
)
from stream.pipeline import BatchResult, Pipeline
from stream.scoring import pinball_loss, previous_window, score
from tests.fakes import FakeCache, FakeModel, FakeStore, W

MAX = 65_536
SOURCE = Source("ticks", 0, 7)


def score_of(row: list[float], last: float, actual: float) -> Score:
    s = score(
        row=np.log(np.asarray(row)),
        quantiles=(0.1, 0.5, 0.9),
        columns=(0, 1, 2),
        last_price=last,
        actual=actual,
        symbol="A",
        ts=5,
        horizon=1,
        interval=0.8,
        model_version="m1",
        window_hash="h",
        source=SOURCE,
    )
    assert s is not None
    return s


def test_a_score_by_hand_outcome_inside_the_interval() -> None:
    # forecast from last = 100: quantile prices 99, 100, 102; the outcome is 101
    s = score_of([0.99, 1.0, 1.02], 100.0, 101.0)
    assert (s.lower, s.price, s.upper) == pytest.approx((99.0, 100.0, 102.0))
    assert s.abs_error == pytest.approx(1.0)
    assert s.squared_error == pytest.approx(1.0)
    assert s.persistence_abs_error == 1.0
    # pinball: q=0.1: 0.1 x 2; q=0.5: 0.5 x 1; q=0.9: (0.9 - 1) x -1
    assert s.pinball_loss == pytest.approx((0.2 + 0.5 + 0.1) / 3)
    assert s.hit is True
    assert (s.actual, s.last_price, s.window_hash, s.source) == (101.0, 100.0, "h", SOURCE)


def test_a_score_by_hand_outcome_below_the_interval() -> None:
    s = score_of([0.99, 1.0, 1.02], 100.0, 96.0)
    assert s.abs_error == pytest.approx(4.0)
    assert s.squared_error == pytest.approx(16.0)
    assert s.persistence_abs_error == 4.0
    # diffs -3, -4, -6: (0.1 - 1) x -3, (0.5 - 1) x -4, (0.9 - 1) x -6
    assert s.pinball_loss == pytest.approx((2.7 + 2.0 + 0.6) / 3)
    assert s.hit is False


def test_the_interval_bounds_count_as_hits() -> None:
    s = score_of([0.99, 1.0, 1.02], 100.0, 100.0 * math.exp(math.log(1.02)))
    assert s.hit is True


def test_a_non_finite_forecast_is_not_scored() -> None:
    row = np.array([0.0, math.nan, 0.1])
    kwargs = dict(symbol="A", ts=1, horizon=1, interval=0.8, model_version="m", window_hash="h")
    assert (
        score(
            row=row,
            quantiles=(0.1, 0.5, 0.9),
            columns=(0, 1, 2),
            last_price=1.0,
            actual=1.0,
            source=SOURCE,
            **kwargs,  # type: ignore[arg-type]
        )
        is None
    )
    huge = np.array([0.0, 1000.0, 1000.0])
    assert (
        score(
            row=huge,
            quantiles=(0.1, 0.5, 0.9),
            columns=(0, 1, 2),
            last_price=1.0,
            actual=1.0,
            source=SOURCE,
            **kwargs,  # type: ignore[arg-type]
        )
        is None
    )


# eighths: exact in binary, so "zero only on the mark" is not blurred by underflow
finite = st.integers(-(10**7), 10**7).map(lambda i: i / 8)


@given(actual=finite, qs=st.lists(finite, min_size=1, max_size=5))
def test_pinball_is_never_negative_and_zero_only_on_the_mark(
    actual: float, qs: list[float]
) -> None:
    quantiles = [(i + 1) / (len(qs) + 1) for i in range(len(qs))]
    loss = pinball_loss(actual, sorted(qs), quantiles)
    assert loss >= 0.0
    assert (loss == 0.0) == all(q == actual for q in qs)


@given(actual=finite, median=finite)
def test_the_median_pinball_is_half_the_absolute_error(actual: float, median: float) -> None:
    assert pinball_loss(actual, [median], [0.5]) == pytest.approx(abs(actual - median) / 2)


@given(
    last=st.floats(1e-3, 1e6),
    actual=st.floats(1e-3, 1e6),
    r=st.lists(st.floats(-0.5, 0.5), min_size=3, max_size=3),
)
def test_scores_agree_with_their_own_fields(last: float, actual: float, r: list[float]) -> None:
    r.sort()
    s = score(
        row=np.asarray(r),
        quantiles=(0.1, 0.5, 0.9),
        columns=(0, 1, 2),
        last_price=last,
        actual=actual,
        symbol="A",
        ts=1,
        horizon=1,
        interval=0.8,
        model_version="m",
        window_hash="h",
        source=SOURCE,
    )
    assert s is not None
    # the very numbers a published forecast carries: last x exp(log return), in Python floats
    assert s.price == last * math.exp(r[1])
    assert s.abs_error == abs(actual - s.price)
    # e * e, as the scorer computes it (x ** 2 may round differently in the last bit)
    assert s.squared_error == (actual - s.price) * (actual - s.price)
    assert s.persistence_abs_error == abs(actual - last)
    assert s.hit == (s.lower <= actual <= s.upper)
    assert decode_score(encode_score(s)) == s


def test_the_window_before_is_the_price_before_and_all_but_the_last() -> None:
    prices = np.array([2.0, 3.0, 4.0])
    w = Window(Tick("A", 4.0, 1, 0, 0), prices, False, 1.0)
    prev = previous_window(w)
    assert prev is not None and prev.tolist() == [1.0, 2.0, 3.0]
    assert previous_window(Window(Tick("A", 4.0, 1, 0, 0), prices, False)) is None


# ------------------------------------------------------------ in the pipeline, with fakes


def msg(offset: int, price: float, symbol: str = "A") -> Record:
    return Record("ticks", 0, offset, symbol.encode(), encode_tick(symbol, price, 1000 + offset))


def prices_of(n: int, start: int = 0) -> list[float]:
    # not a straight line, so every window has its own forecast
    return [100.0 + o + (o % 3) * 0.7 for o in range(start, start + n)]


def feed(n: int, start: int = 0, symbol: str = "A") -> list[Record]:
    return [
        msg(o, p, symbol) for o, p in zip(range(start, start + n), prices_of(n, start), strict=True)
    ]


class Parts:
    def __init__(self) -> None:
        self.store, self.cache, self.model = FakeStore(before=True), FakeCache(), FakeModel()

    def pipeline(self, scoring: bool = True) -> Pipeline:
        return Pipeline(
            self.store,
            self.cache,
            self.model,
            source_topic="ticks",
            clock_ms=lambda: 1_700_000_000_000,
            scoring=scoring,
        )


def check_against_forecasts(results: list[BatchResult]) -> list[Score]:
    """Every score is the forecast published for the symbol's tick before, judged by this one."""
    forecasts = {(f.symbol, f.source.offset): f for r in results for f in r.forecasts}
    scores = [s for r in results for s in r.scores]
    for s in scores:
        before = forecasts[(s.symbol, s.source.offset - 1)]  # one symbol: offsets are its ticks
        assert (s.window_hash, s.price, s.lower, s.upper, s.last_price) == (
            before.window_hash,
            before.price,
            before.lower,
            before.upper,
            before.last_price,
        )
        assert (s.model_version, s.interval, s.horizon) == ("m1", 0.8, 1)
        actual = forecasts[(s.symbol, s.source.offset)].last_price
        assert s.actual == actual
        assert s.abs_error == abs(actual - before.price)
        assert s.persistence_abs_error == abs(actual - before.last_price)
        assert s.hit == (before.lower <= actual <= before.upper)
    return scores


def test_every_tick_after_the_first_window_scores_the_forecast_before_it() -> None:
    parts = Parts()
    p = parts.pipeline()
    results = [p.process(feed(5), MAX), p.process(feed(1, 5), MAX), p.process(feed(4, 6), MAX)]
    scores = check_against_forecasts(results)
    # windows end at offsets 2..9; the first (2) has no window before it
    assert [s.source.offset for s in scores] == list(range(3, 10))
    # the window before comes from the batch itself or the batch before: no extra lookups,
    # no extra model rows
    assert parts.cache.gets == []
    assert sum(len(b) for b in parts.model.batches) == 8


def test_a_restarted_pipeline_takes_the_window_before_from_the_cache() -> None:
    parts = Parts()
    first = parts.pipeline().process(feed(6), MAX)
    again = parts.pipeline().process(feed(1, 6), MAX)  # a new process: nothing in memory
    check_against_forecasts([first, again])
    [s] = again.scores
    assert parts.cache.gets[-1] == [s.window_hash]  # one lookup, in the batch's round trip
    assert len(parts.model.batches) == 2 and len(parts.model.batches[1]) == 1  # only the new one


def test_a_window_before_gone_from_the_cache_is_computed_in_the_same_model_call() -> None:
    parts = Parts()
    first = parts.pipeline().process(feed(6), MAX)
    parts.cache.data.clear()  # its TTL ran out: a quiet symbol
    again = parts.pipeline().process(feed(1, 6), MAX)
    check_against_forecasts([first, again])
    [s] = again.scores
    assert len(parts.model.batches) == 2 and len(parts.model.batches[1]) == 2
    assert s.window_hash in parts.cache.data  # cached like any output


def test_redelivered_ticks_give_identical_scores() -> None:
    parts = Parts()
    p = parts.pipeline()
    first = [p.process(feed(4), MAX), p.process(feed(4, 4), MAX)]
    replay = parts.pipeline().process(feed(8), MAX)  # a restart reads everything again
    assert [s for r in first for s in r.scores] == replay.scores
    assert len(replay.scores) == 5


def test_a_batch_prepared_while_the_one_before_is_in_the_model_takes_its_outputs() -> None:
    """The runner prepares batch N+1 while N is in the model; N+1's windows before are N's."""
    parts = Parts()
    p = parts.pipeline()
    a = p.prepare(feed(5), MAX)
    b = p.prepare(feed(3, 5), MAX)  # a's outputs are not computed, nor cached yet
    assert parts.cache.gets == []
    p.compute(a)
    p.fill(a)
    p.compute(b)
    p.fill(b)
    results = [p.finish(a), p.finish(b)]
    assert len(check_against_forecasts(results)) == 5
    assert sum(len(m) for m in parts.model.batches) == 6  # each window once


def test_a_dropped_batch_before_leaves_its_windows_to_be_computed() -> None:
    parts = Parts()
    p = parts.pipeline()
    a = p.prepare(feed(5), MAX)
    b = p.prepare(feed(1, 5), MAX)  # `a` is dropped (a rewind) and never computed
    p.compute(b)
    p.fill(b)
    [s] = p.finish(b).scores
    assert len(parts.model.batches[0]) == 2  # the new window and the one before
    redo = parts.pipeline().process(feed(6), MAX)
    assert redo.scores[-1] == s
    assert a.handoff.computed is False


def test_a_forecast_that_was_not_published_is_not_scored() -> None:
    parts = Parts()
    parts.model.poison = {prices_of(1, 3)[0]}  # the window ending at offset 3 gives NaN
    result = parts.pipeline().process(feed(6), MAX)
    assert result.non_finite == 1
    assert [s.source.offset for s in result.scores] == [3, 5]  # 4 would score the NaN one


def test_symbols_are_scored_each_against_their_own_window_before() -> None:
    parts = Parts()
    records = [msg(o, 100.0 + o * (1 + s), "AB"[s]) for o in range(0, 12) for s in (o % 2,)]
    result = parts.pipeline().process(records, MAX)
    forecasts = {f.window_hash: f for f in result.forecasts}
    for s in result.scores:
        assert forecasts[s.window_hash].symbol == s.symbol
    assert len(result.scores) == 2 * (6 - W)


def test_scoring_off_adds_nothing() -> None:
    parts = Parts()
    p = parts.pipeline(scoring=False)
    results = [p.process(feed(5), MAX), p.process(feed(3, 5), MAX)]
    assert all(r.scores == [] for r in results)
    assert sum(len(m) for m in parts.model.batches) == 6


# ------------------------------------------------------------ metrics


def test_score_metrics_sum_per_model_and_named_symbol_and_bound_the_rest() -> None:
    from prometheus_client import CollectorRegistry

    from stream.metrics import OTHER_SYMBOLS, Metrics

    metrics = Metrics(CollectorRegistry())
    metrics.scores.symbols = frozenset({"A"})
    a1 = score_of([0.99, 1.0, 1.02], 100.0, 101.0)  # error 1, persistence 1, hit
    a2 = score_of([0.99, 1.0, 1.02], 100.0, 96.0)  # error 4, persistence 4, miss
    others = [
        Score(**{**{f: getattr(a2, f) for f in Score.__struct_fields__}, "symbol": sym})
        for sym in ("B", "C", "D")
    ]
    metrics.scores.record([a1, a2])
    metrics.scores.record(others)
    value = metrics.registry.get_sample_value

    def at(name: str, symbol: str) -> float | None:
        return value(name, {"model_version": "m1", "symbol": symbol})

    assert at("tickcast_scored_total", "A") == 2
    assert at("tickcast_score_interval_hits_total", "A") == 1
    assert at("tickcast_score_abs_error_sum", "A") == pytest.approx(5.0)
    assert at("tickcast_score_abs_error_count", "A") == 2
    assert at("tickcast_score_squared_error_sum", "A") == pytest.approx(17.0)
    assert at("tickcast_score_persistence_abs_error_sum", "A") == pytest.approx(5.0)
    assert at("tickcast_score_pinball_loss_sum", "A") == pytest.approx(
        a1.pinball_loss + a2.pinball_loss
    )
    # B, C, D are not named: one series for all of them
    assert at("tickcast_scored_total", OTHER_SYMBOLS) == 3
    assert at("tickcast_score_abs_error_sum", OTHER_SYMBOLS) == pytest.approx(12.0)
    assert at("tickcast_scored_total", "B") is None
    assert value("tickcast_score_interval", {"model_version": "m1"}) == 0.8


def test_the_demo_summarises_live_scores_from_the_services_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from stream.metrics import Metrics
    from tools.demo import live_scores

    metrics = Metrics(CollectorRegistry())
    metrics.scores.record(
        [score_of([0.99, 1.0, 1.02], 100.0, 101.0), score_of([0.99, 1.0, 1.02], 100.0, 96.0)]
    )
    scraped = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.render().decode().splitlines()
        if line.startswith("tickcast_")
    }
    [(version, row)] = live_scores(scraped).items()
    assert version == "m1"
    assert row["n"] == 2 and row["nominal"] == 0.8
    assert row["mae"] == pytest.approx(2.5)  # errors 1 and 4
    assert row["mase"] == pytest.approx(5.0 / 5.0)  # persistence's errors 1 and 4
    assert row["coverage"] == 0.5

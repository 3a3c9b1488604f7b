"""The pipeline core with small in-memory stand-ins for the window store, cache and model.

The fakes implement only what the pipeline relies on; the real store and cache are tested
against Redis in tests/integration.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.cache import digest
from stream.contracts import (
    Forecast,
    Record,
    Source,
    dead_letter_headers,
    encode_forecast,
    encode_tick,
)
from stream.errors import ModelError
from stream.pipeline import Pipeline
from stream.predictor import quantile_columns
from stream.windows import OUTCOMES
from tests.fakes import FakeCache, FakeModel, FakeStore, W

MAX = 65_536
F64 = npt.NDArray[np.float64]


@pytest.fixture
def parts() -> tuple[FakeStore, FakeCache, FakeModel]:
    return FakeStore(), FakeCache(), FakeModel()


def pipeline(
    parts: tuple[FakeStore, FakeCache, FakeModel], late_policy: str = "dead_letter"
) -> Pipeline:
    store, cache, model = parts
    return Pipeline(
        store,
        cache,
        model,
        source_topic="ticks",
        clock_ms=lambda: 1_700_000_000_123,
        late_policy=late_policy,  # type: ignore[arg-type]
    )


def msg(offset: int, price: float, ts: int | None = None, symbol: str = "A") -> Record:
    value = encode_tick(symbol, price, 1000 + offset if ts is None else ts)
    return Record("ticks", 0, offset, symbol.encode(), value)


def feed(n: int, symbol: str = "A", start: int = 0) -> list[Record]:
    return [msg(o, 100.0 + o, symbol=symbol) for o in range(start, start + n)]


def test_one_forecast_per_full_window_in_input_order(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    result = pipeline(parts).process(feed(5), MAX)
    assert [f.source.offset for f in result.forecasts] == [2, 3, 4]
    f = result.forecasts[0]
    window = np.array([100.0, 101.0, 102.0])
    mid = float(np.diff(np.log(window)).mean())
    assert f == Forecast(
        symbol="A",
        ts=1002,
        horizon=1,
        price=102.0 * np.exp(mid),
        lower=102.0 * np.exp(mid - 0.01),
        upper=102.0 * np.exp(mid + 0.01),
        interval=0.8,
        last_price=102.0,
        model_version="m1",
        window_hash=digest(window, 1),
        cached=False,
        source=Source("ticks", 0, 2),
        produced_at=1_700_000_000_123,
    )
    assert f.lower < f.price < f.upper
    assert result.counts == {
        **dict.fromkeys(OUTCOMES, 0),
        "processed": 5,
        "warming": 2,
        "invalid": 0,
    }
    assert set(result.stage_seconds) == {"decode", "window", "cache", "inference"}


def test_one_call_to_each_collaborator_per_batch(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    store, cache, model = parts
    p = pipeline(parts)
    batch = feed(10) + feed(10, "B", start=10)
    p.process(batch, MAX)
    # New windows: nothing to look up (they cannot have been forecast before); one fill.
    assert store.calls == 1 and cache.gets == [] and len(cache.puts) == 1
    assert len(model.batches) == 1 and model.batches[0].shape == (16, W)
    p.process(batch, MAX)
    # The same batch redelivered: one lookup, all hits, no model call, nothing to fill.
    assert store.calls == 2 and len(cache.gets) == 1 and len(cache.gets[0]) == 16
    assert len(model.batches) == 1


def test_a_redelivered_batch_is_served_from_the_cache_identically(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    _, _, model = parts
    p = pipeline(parts)
    batch = feed(6)
    first = p.process(batch, MAX)
    assert (first.cache_hits, first.cache_misses, first.inference_batch_size) == (0, 0, 4)

    again = p.process(batch, MAX)
    assert len(model.batches) == 1  # no inference the second time
    assert (again.cache_hits, again.cache_misses, again.inference_batch_size) == (4, 0, 0)
    assert again.counts["replayed"] == 6
    assert all(f.cached for f in again.forecasts)
    for a, b in zip(first.forecasts, again.forecasts, strict=True):
        assert encode_forecast(a).replace(b'"cached":false', b'"cached":true') == encode_forecast(b)


def test_identical_windows_in_one_batch_cost_one_inference(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    _, cache, model = parts
    same = [msg(o, 100.0 + o % 3, symbol=s) for o, s in enumerate("AAABBB")]
    result = pipeline(parts).process(same, MAX)
    assert [f.symbol for f in result.forecasts] == ["A", "B"]
    assert result.forecasts[0].window_hash == result.forecasts[1].window_hash
    assert result.forecasts[0].price == result.forecasts[1].price
    assert model.batches[0].shape == (1, W)
    assert cache.gets == []  # new windows are not looked up
    assert result.inference_batch_size == 1


def test_a_non_finite_output_is_neither_published_nor_cached(
    parts: tuple[FakeStore, FakeCache, FakeModel], caplog: pytest.LogCaptureFixture
) -> None:
    _, cache, model = parts
    model.poison = {103.0}
    with caplog.at_level(logging.WARNING, logger="stream.pipeline"):
        result = pipeline(parts).process(feed(6), MAX)
    assert [f.source.offset for f in result.forecasts] == [2, 4, 5]
    assert result.non_finite == 1
    bad_hash = digest(np.array([101.0, 102.0, 103.0]), 1)
    assert bad_hash not in cache.data and len(cache.data) == 3
    assert bad_hash in caplog.text


def test_an_overflowing_price_is_dropped_too(
    parts: tuple[FakeStore, FakeCache, FakeModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, model = parts
    monkeypatch.setattr(model, "predict_batch", lambda w: np.full((len(w), 3), 800.0))
    result = pipeline(parts).process(feed(3), MAX)
    assert result.forecasts == [] and result.non_finite == 1


def test_a_model_that_loses_rows_fails_the_batch(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    _, cache, model = parts
    model.drop_row = True
    with pytest.raises(ModelError, match="expected"):
        pipeline(parts).process(feed(5), MAX)
    assert cache.data == {}


def test_quantiles_must_include_the_median(
    parts: tuple[FakeStore, FakeCache, FakeModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeModel, "quantiles", (0.1, 0.9))
    with pytest.raises(ModelError, match=r"no 0\.5 quantile"):
        pipeline(parts).process(feed(3), MAX)


def test_dead_letters_carry_the_original_bytes(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    late = msg(3, 1.0, ts=999)
    junk = Record("ticks", 0, 4, b"A", b"\x00junk")
    result = pipeline(parts).process([*feed(3), late, junk], MAX)
    assert [(r.reason, r.offset) for r in result.dead_letters] == [("not_json", 4), ("late", 3)]
    by_reason = {r.reason: r for r in result.dead_letters}
    assert by_reason["late"].value == late.value and by_reason["late"].key == b"A"
    assert by_reason["not_json"].value == b"\x00junk"
    assert dict(dead_letter_headers(by_reason["late"]))["source.offset"] == b"3"
    assert result.counts["invalid"] == 1 and result.counts["late"] == 1


def test_late_policy_drop_counts_but_does_not_dead_letter(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    dup = msg(3, 1.0, ts=1002)
    result = pipeline(parts, late_policy="drop").process([*feed(3), dup], MAX)
    assert result.dead_letters == []
    assert result.counts["duplicate"] == 1


def test_nothing_to_forecast_calls_no_cache_or_model(
    parts: tuple[FakeStore, FakeCache, FakeModel],
) -> None:
    _, cache, model = parts
    result = pipeline(parts).process(feed(2), MAX)
    assert result.forecasts == [] and cache.gets == [] and model.batches == []
    assert pipeline(parts).process([], MAX).counts["invalid"] == 0


def test_a_bad_late_policy_is_refused(parts: tuple[FakeStore, FakeCache, FakeModel]) -> None:
    with pytest.raises(ValueError, match="late_policy"):
        pipeline(parts, late_policy="ignore")


@settings(max_examples=40, deadline=None)
@given(
    prices=st.lists(st.floats(1.0, 1e6), min_size=W + 1, max_size=3 * W + 5),
    symbols=st.integers(1, 3),
    split=st.integers(1, 7),
)
def test_the_model_gets_each_missing_window_once_as_float64_rows_in_order(
    prices: list[float], symbols: int, split: int
) -> None:
    """compute builds the model's matrix with np.array (issue 14): bit for bit what np.stack of
    the misses' windows (own, or before for scoring) gave, C-contiguous float64."""
    store, cache, model = FakeStore(before=True), FakeCache(), FakeModel()
    p = Pipeline(store, cache, model, source_topic="ticks", clock_ms=lambda: 0)
    records = [
        Record(
            "ticks",
            0,
            o,
            f"S{o % symbols}".encode(),
            encode_tick(f"S{o % symbols}", price, 1000 + o),
        )
        for o, price in enumerate(prices)
    ]
    for i in range(0, len(records), split):
        prepared = p.prepare(records[i : i + split], MAX)
        first = {}
        for d, w in zip(prepared.digests, prepared.windows, strict=True):
            first.setdefault(d, w.prices)
        before = len(model.batches)
        p.compute(prepared)
        if not prepared.misses:
            continue
        rows = [prepared.extra[d] if d in prepared.extra else first[d] for d in prepared.misses]
        expected = np.stack(rows).astype(np.float64)
        (given_matrix,) = model.batches[before:]
        assert given_matrix.dtype == np.float64 and given_matrix.flags.c_contiguous
        assert given_matrix.tobytes() == expected.tobytes()
        p.fill(prepared)
        p.finish(prepared)


def test_the_interval_is_found_by_its_quantiles_not_by_position() -> None:
    # A model with more quantiles than three still serves the interval its manifest names: the
    # first and last columns of this one are a 90 % interval, not the 80 % one.
    wide = [0.05, 0.1, 0.5, 0.9, 0.95]
    assert quantile_columns(wide, 0.8) == (1, 2, 3)
    assert quantile_columns(wide, 0.9) == (0, 2, 4)
    assert quantile_columns([0.1, 0.5, 0.9], 0.8) == (0, 1, 2)


@pytest.mark.parametrize(
    ("quantiles", "interval", "says"),
    [
        ([0.1, 0.5, 0.9], 0.9, "no 0.05 quantile"),
        ([0.1, 0.4, 0.9], 0.8, "no 0.5 quantile"),
        ([0.9, 0.5, 0.1], 0.8, "ascending"),
    ],
)
def test_a_model_without_the_interval_or_median_is_refused(
    quantiles: list[float], interval: float, says: str
) -> None:
    with pytest.raises(ModelError, match=says):
        quantile_columns(quantiles, interval)

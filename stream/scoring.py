"""Live scoring: every forecast judged when its outcome arrives (horizon 1: the symbol's next tick).

The forecast that the tick at t scores is the model's output for the window before, W_{t-1}, and
W_{t-1} = [before] + W_t[:-1], where `before` is the price the window store returns with W_t
(stream/windows.py). A window's output is the same bits whatever batch computes it (fixed
inference shapes, tests/model/test_batch_invariance.py) and the result cache holds it under the
window's digest, so a score is a pure function of what the store and the cache already hold: no
scoring state of its own, nothing to keep consistent with the windows, and the very same score on
every redelivery, after a restart, under either delivery guarantee. The pipeline looks W_{t-1}'s
output up among its own batch's outputs, then in the cache in the round trip the batch's replay
lookups make anyway, and computes the rare miss (a symbol quieter than the cache TTL) in the
batch's model call. The model is the batch's: right after a hot reload, a symbol's first tick
scores the new model's output for the window before, not the old model's published forecast (a
score is always of the version it is labelled with).

Errors are in price units, from the very numbers the published forecast carries (`last x
exp(log-return quantile)`, computed as the pipeline computes them): absolute and squared error of
the median, persistence's absolute error on the same step (MASE's scale, live), the pinball loss
averaged over the model's quantiles, and whether the outcome fell inside the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from stream.contracts import Score, Source, Window

F64Array = npt.NDArray[np.float64]


def previous_window(window: Window) -> F64Array | None:
    """W_{t-1} = [before] + W_t[:-1], or None when the store no longer holds `before`."""
    before = window.before
    if not math.isfinite(before):
        return None
    prices = window.prices
    prev = np.empty(prices.shape[0], dtype=np.float64)
    prev[0] = before
    prev[1:] = prices[:-1]
    return prev


def quantile_prices(last_price: float, row: F64Array) -> list[float] | None:
    """The prices of a forecast's quantiles, `last x exp(log-return quantile)`, in Python floats
    as the pipeline computes a published forecast's (`forecast_values`), so the numbers are equal;
    None when one is beyond a double."""
    exp = math.exp
    try:
        return [last_price * exp(r) for r in row.tolist()]
    except OverflowError:
        return None


def pinball_loss(
    actual: float, quantile_prices: Sequence[float], quantiles: Sequence[float]
) -> float:
    """Mean over the quantiles of max(q (y - y_q), (q - 1) (y - y_q))."""
    total = 0.0
    for q, yq in zip(quantiles, quantile_prices, strict=True):
        diff = actual - yq
        total += max(q * diff, (q - 1.0) * diff)
    return total / len(quantiles)


class Scorer:
    """Scores for one model (its quantiles, interval, version), one forecast at a time; the
    pipeline's hot path, so positional and free of numpy per element (a row is `tolist`ed once)."""

    __slots__ = ("_columns", "_horizon", "_interval", "_quantiles", "_version")

    def __init__(
        self,
        quantiles: Sequence[float],
        columns: tuple[int, int, int],
        horizon: int,
        interval: float,
        model_version: str,
    ) -> None:
        self._quantiles = tuple((float(q), float(q) - 1.0) for q in quantiles)
        self._columns = columns
        self._horizon = horizon
        self._interval = float(interval)
        self._version = model_version

    def score(
        self,
        row: F64Array,
        last_price: float,
        actual: float,
        symbol: str,
        ts: int,
        window_hash: str,
        source: Source,
    ) -> Score | None:
        """The score of the forecast `row` (log-return quantiles) made from a window ending at
        `last_price`, against the outcome `actual`; None when the forecast was not finite (it
        was never published either)."""
        prices = quantile_prices(last_price, row)
        if prices is None:
            return None
        return self.score_prices(prices, last_price, actual, symbol, ts, window_hash, source)

    def score_prices(
        self,
        prices: list[float],
        last_price: float,
        actual: float,
        symbol: str,
        ts: int,
        window_hash: str,
        source: Source,
    ) -> Score | None:
        """`score`, from the forecast's quantile prices (`quantile_prices(last_price, row)`):
        the pipeline prices each window's output once, for its forecast and for its score."""
        total = 0.0
        for (q, q1), yq in zip(self._quantiles, prices, strict=True):
            if not math.isfinite(yq):
                return None
            diff = actual - yq
            total += q * diff if diff >= 0.0 else q1 * diff
        lo_i, mid_i, hi_i = self._columns
        price, lower, upper = prices[mid_i], prices[lo_i], prices[hi_i]
        error = actual - price
        return Score(
            symbol,
            ts,
            self._horizon,
            self._version,
            window_hash,
            price,
            lower,
            upper,
            self._interval,
            last_price,
            actual,
            abs(error),
            error * error,
            abs(actual - last_price),
            total / len(prices),
            lower <= actual <= upper,
            source,
        )

    def score_many(
        self,
        prices: Sequence[list[float]],
        last_prices: Sequence[float],
        actuals: Sequence[float],
        symbols: Sequence[str],
        ts: Sequence[int],
        window_hashes: Sequence[str],
        sources: Sequence[Source],
    ) -> list[Score]:
        """`score_prices` of many forecasts at once, the ones not finite left out: the same
        bits, as the arithmetic is the same IEEE operations in the same order (a difference, a
        product, a sum column after column from 0.0), done per column of the batch instead of
        per forecast in Python floats (held equal by tests/unit/test_score_many.py)."""
        n = len(prices)
        n_q = len(self._quantiles)
        if n == 0:
            return []
        matrix = np.array(prices, dtype=np.float64).reshape(n, n_q)
        actual = np.array(actuals, dtype=np.float64)
        last = np.array(last_prices, dtype=np.float64)
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            keep = np.flatnonzero(finite).tolist()
            matrix, actual, last = matrix[finite], actual[finite], last[finite]
            symbols = [symbols[i] for i in keep]
            ts = [ts[i] for i in keep]
            window_hashes = [window_hashes[i] for i in keep]
            sources = [sources[i] for i in keep]
        # Python floats overflow to inf without a word; so must these (an absurd forecast)
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.zeros(actual.shape[0], dtype=np.float64)
            for j, (q, q1) in enumerate(self._quantiles):
                diff = actual - matrix[:, j]
                total += np.where(diff >= 0.0, q * diff, q1 * diff)
            lo_i, mid_i, hi_i = self._columns
            price, lower, upper = matrix[:, mid_i], matrix[:, lo_i], matrix[:, hi_i]
            error = actual - price
            columns = (
                price.tolist(),
                lower.tolist(),
                upper.tolist(),
                last.tolist(),
                actual.tolist(),
                np.abs(error).tolist(),
                (error * error).tolist(),
                np.abs(actual - last).tolist(),
                (total / n_q).tolist(),
                ((lower <= actual) & (actual <= upper)).tolist(),
            )
        horizon, version, interval = self._horizon, self._version, self._interval
        return [
            Score(
                symbol, t, horizon, version, h, p, lo, hi, interval, lp, a, ae, se, pe, pl, hit, src
            )
            for symbol, t, h, p, lo, hi, lp, a, ae, se, pe, pl, hit, src in zip(
                symbols, ts, window_hashes, *columns, sources, strict=True
            )
        ]


def score(
    *,
    row: F64Array,
    quantiles: Sequence[float],
    columns: tuple[int, int, int],
    last_price: float,
    actual: float,
    symbol: str,
    ts: int,
    horizon: int,
    interval: float,
    model_version: str,
    window_hash: str,
    source: Source,
) -> Score | None:
    """`Scorer.score` for one forecast, every argument named."""
    scorer = Scorer(quantiles, columns, horizon, interval, model_version)
    return scorer.score(row, last_price, actual, symbol, ts, window_hash, source)

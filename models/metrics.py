"""Forecast accuracy against persistence, on the same rows. numpy and math only.

Every figure is computed on prices (USD for the gold series): the point forecast is
last_price * exp(median quantile), the interval is last_price * exp(lower/upper quantile).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided binomial test against p = 0.5: P(|X - n/2| >= |k - n/2|).

    Exact (integer arithmetic through math.comb), not a normal approximation; with p = 0.5 the
    distribution is symmetric, so the two-sided p-value is twice the smaller tail, capped at 1.
    """
    if trials == 0:
        return 1.0
    k = min(successes, trials - successes)
    tail = sum(math.comb(trials, i) for i in range(k + 1))
    # Exact rational -> float: big integers keep full precision until this division.
    return min(1.0, 2 * tail / 2**trials)


def forecast_metrics(
    last: np.ndarray, actual: np.ndarray, quantiles: np.ndarray, interval: float
) -> dict[str, Any]:
    """Model vs persistence on the same rows.

    last: price before each target (the persistence forecast); actual: the target prices;
    quantiles: (n, 3) log-return quantiles (lower, median, upper).
    """
    last = np.asarray(last, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    q = np.asarray(quantiles, dtype=np.float64)
    point = last * np.exp(q[:, q.shape[1] // 2])
    lower = last * np.exp(q[:, 0])
    upper = last * np.exp(q[:, -1])

    def accuracy(pred: np.ndarray) -> dict[str, float]:
        err = pred - actual
        return {
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mape_pct": float(np.mean(np.abs(err) / actual) * 100),
        }

    model = accuracy(point)
    persistence = accuracy(last)
    model["mase"] = model["mae"] / persistence["mae"]
    persistence["mase"] = 1.0

    # Direction: did the point forecast move the same way as the price? Days when the price did
    # not move, or the forecast sits exactly on the last price, have no direction and are left out.
    actual_move = np.sign(actual - last)
    forecast_move = np.sign(point - last)
    scored = (actual_move != 0) & (forecast_move != 0)
    hits = int(np.sum(actual_move[scored] == forecast_move[scored]))
    trials = int(np.sum(scored))
    inside = (actual >= lower) & (actual <= upper)
    return {
        "n": int(actual.shape[0]),
        "model": model,
        "persistence": persistence,
        "interval": {
            "level": interval,
            "coverage": float(np.mean(inside)),
            "mean_width": float(np.mean(upper - lower)),
        },
        "direction": {
            "accuracy": hits / trials if trials else float("nan"),
            "hits": hits,
            "trials": trials,
            "p_value": binomial_two_sided_p(hits, trials),
            "test": "exact two-sided binomial against 0.5",
        },
    }

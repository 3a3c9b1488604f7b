"""Scores and tests for interval and quantile forecasts (numpy, scipy for the distributions).

- Winkler (interval) score of a central (1 - alpha) interval: width plus 2/alpha times the miss.
- Pinball (quantile) loss, averaged over the quantile levels.
- Kupiec's proportion-of-failures test (unconditional coverage), a likelihood ratio ~ chi2(1).
- Christoffersen's independence test: a first-order Markov chain of misses against independence.
- Diebold-Mariano on a loss differential with a Newey-West (Bartlett) long-run variance and the
  Harvey-Leybourne-Newbold small-sample correction, referred to Student t with n-1 df.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def winkler(lower: np.ndarray, upper: np.ndarray, actual: np.ndarray, alpha: float) -> np.ndarray:
    """Per-row Winkler score of the interval [lower, upper] at nominal level 1 - alpha."""
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return np.asarray((upper - lower) + (2.0 / alpha) * (below + above))


def pinball(quantiles: np.ndarray, actual: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per-row pinball loss averaged over the columns; quantiles (n, k), levels (k,)."""
    tau = np.asarray(levels, dtype=np.float64)[None, :]
    err = np.asarray(actual, dtype=np.float64)[:, None] - quantiles
    return np.asarray(np.mean(np.maximum(tau * err, (tau - 1.0) * err), axis=1))


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(misses: int, n: int, rate: float) -> dict[str, float]:
    """Kupiec's POF test that misses / n equals `rate`: LR statistic and chi2(1) p-value."""
    from scipy.stats import chi2

    if n == 0:
        return {"misses": 0, "n": 0, "rate": float("nan"), "lr": 0.0, "p_value": 1.0}
    observed = misses / n
    null = _xlogy(n - misses, 1.0 - rate) + _xlogy(misses, rate)
    alt = _xlogy(n - misses, 1.0 - observed) + _xlogy(misses, observed)
    lr = max(0.0, -2.0 * (null - alt))
    return {
        "misses": int(misses),
        "n": int(n),
        "rate": observed,
        "lr": lr,
        "p_value": float(chi2.sf(lr, 1)),
    }


def christoffersen_independence(miss: np.ndarray) -> dict[str, float]:
    """Christoffersen's (1998) test that a miss today does not change tomorrow's miss probability.

    miss: 0/1 sequence in time order. Counts n_ij of transitions i -> j; LR against a single
    miss probability, chi2(1). A sequence without a miss (or without a hit) cannot cluster: p = 1.
    """
    from scipy.stats import chi2

    m = np.asarray(miss, dtype=np.int64)
    prev, cur = m[:-1], m[1:]
    n00 = int(np.sum((prev == 0) & (cur == 0)))
    n01 = int(np.sum((prev == 0) & (cur == 1)))
    n10 = int(np.sum((prev == 1) & (cur == 0)))
    n11 = int(np.sum((prev == 1) & (cur == 1)))
    total = n00 + n01 + n10 + n11
    counts = {"n00": n00, "n01": n01, "n10": n10, "n11": n11}
    if total == 0 or n01 + n11 == 0 or n00 + n10 == 0:
        return {**counts, "pi0": float("nan"), "pi1": float("nan"), "lr": 0.0, "p_value": 1.0}
    pi = (n01 + n11) / total
    pi0 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = _xlogy(n00, 1.0 - pi0) + _xlogy(n01, pi0) + _xlogy(n10, 1.0 - pi1) + _xlogy(n11, pi1)
    lr = max(0.0, -2.0 * (null - alt))
    return {**counts, "pi0": pi0, "pi1": pi1, "lr": lr, "p_value": float(chi2.sf(lr, 1))}


def newey_west_lag(n: int) -> int:
    """The usual automatic truncation lag floor(4 (n / 100)^(2/9)) (8 for n = 2,786)."""
    return math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0))


def newey_west_variance(d: np.ndarray, lag: int) -> float:
    """Long-run variance of d: gamma_0 + 2 sum_{k=1}^{lag} (1 - k / (lag + 1)) gamma_k,
    autocovariances with divisor n (Bartlett weights keep it non-negative)."""
    x = np.asarray(d, dtype=np.float64) - float(np.mean(d))
    n = x.shape[0]
    var = float(np.dot(x, x)) / n
    for k in range(1, min(lag, n - 1) + 1):
        var += 2.0 * (1.0 - k / (lag + 1.0)) * float(np.dot(x[k:], x[:-k])) / n
    return var


def diebold_mariano(
    loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1, lag: int | None = None
) -> dict[str, Any]:
    """DM test of equal expected loss, d = loss_a - loss_b (negative mean: a is better).

    The HLN-corrected statistic DM * sqrt((n + 1 - 2h + h(h - 1) / n) / n) is referred to
    Student t with n - 1 degrees of freedom; two-sided p-value.
    """
    from scipy.stats import t as student_t

    d = np.asarray(loss_a, dtype=np.float64) - np.asarray(loss_b, dtype=np.float64)
    n = d.shape[0]
    lag = newey_west_lag(n) if lag is None else lag
    var = newey_west_variance(d, lag)
    mean = float(np.mean(d))
    if var <= 0.0:
        return {"mean_diff": mean, "lag": lag, "statistic": float("nan"), "p_value": float("nan")}
    dm = mean / math.sqrt(var / n)
    h = horizon
    stat = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    p = float(2.0 * student_t.sf(abs(stat), n - 1))
    return {"mean_diff": mean, "lag": lag, "statistic": stat, "p_value": p}

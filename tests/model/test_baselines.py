"""Baselines: each target's forecast uses only returns before it; GARCH matches `arch`."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import (
    ewma_normal_quantiles,
    ewma_sigma,
    garch_t_forecast,
    log_returns,
    rolling_quantiles,
    static_quantiles,
    trailing_volatility,
)

pytest.importorskip("arch")
LEVELS = (0.1, 0.5, 0.9)


def series(n: int = 900, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A GARCH-like price path and business-day dates (so months hold ~21 rows)."""
    rng = np.random.default_rng(seed)
    var, r = 1e-4, np.empty(n)
    for i in range(n):
        var = 2e-6 + 0.08 * (r[i - 1] ** 2 if i else 1e-4) + 0.9 * var
        r[i] = np.sqrt(var) * rng.standard_t(6) / np.sqrt(1.5)
    prices = 100 * np.exp(np.cumsum(r))
    dates = np.busday_offset("2000-01-03", np.arange(n), roll="forward")
    return prices, dates


def test_forecasts_use_only_the_past() -> None:
    prices, dates = series()
    start, stop = 700, 760
    returns = log_returns(prices)
    before = {
        "rolling": rolling_quantiles(returns, start, stop, 60, LEVELS),
        "ewma": ewma_normal_quantiles(returns, start, stop, LEVELS),
        "garch": garch_t_forecast(returns, dates, start, stop, window=600).quantiles(LEVELS),
        "vol": trailing_volatility(returns, start, stop),
    }
    changed = prices.copy()
    changed[730:] *= 1.5  # a jump at target 730: forecasts of targets <= 730 must not move
    returns2 = log_returns(changed)
    after = {
        "rolling": rolling_quantiles(returns2, start, stop, 60, LEVELS),
        "ewma": ewma_normal_quantiles(returns2, start, stop, LEVELS),
        "garch": garch_t_forecast(returns2, dates, start, stop, window=600).quantiles(LEVELS),
        "vol": trailing_volatility(returns2, start, stop),
    }
    for name in before:
        k = 730 - start + 1  # rows start..730 are unchanged
        np.testing.assert_array_equal(before[name][:k], after[name][:k], err_msg=name)
        assert not np.array_equal(before[name][k:], after[name][k:]), name


def test_rolling_static_and_ewma_by_hand() -> None:
    prices, _ = series(400)
    r = log_returns(prices)
    assert np.isnan(r[0]) and r[5] == pytest.approx(np.log(prices[5] / prices[4]))
    q = rolling_quantiles(r, 300, 302, 60, LEVELS)
    np.testing.assert_allclose(q[1], np.quantile(r[241:301], LEVELS))
    s = static_quantiles(r, (1, 200), 300, 303, LEVELS)
    assert s.shape == (3, 3)
    np.testing.assert_allclose(s[2], np.quantile(r[1:200], LEVELS))
    sigma = ewma_sigma(r, 0.94)
    assert sigma[2] == pytest.approx(abs(r[1]))
    assert sigma[3] ** 2 == pytest.approx(0.94 * r[1] ** 2 + 0.06 * r[2] ** 2)
    # normal quantiles: +-1.2816 sigma around 0
    e = ewma_normal_quantiles(r, 3, 4, LEVELS)[0]
    assert e == pytest.approx([-1.2815516 * sigma[3], 0.0, 1.2815516 * sigma[3]])


def test_garch_refits_monthly_and_its_first_step_is_arch_s_forecast() -> None:
    from arch import arch_model

    prices, dates = series()
    returns = log_returns(prices)
    start, stop = 700, 760
    forecast = garch_t_forecast(returns, dates, start, stop, window=600)
    months = dates[start:stop].astype("datetime64[M]")
    assert len(forecast.fits) == len(np.unique(months))
    first = forecast.fits[1]  # the second month's fit, made at its first target
    t = first.first_target
    assert months[t - start] != months[t - start - 1]
    assert first.observations == 600
    # refit by hand on the same 600 returns: arch's one-step forecast is our scale at t
    ref = arch_model(100 * returns[t - 600 : t], mean="Constant", vol="GARCH", dist="t").fit(
        disp="off"
    )
    variance = float(ref.forecast(horizon=1).variance.to_numpy()[-1, 0])
    assert forecast.scale[t - start] == pytest.approx(np.sqrt(variance) / 100, rel=1e-6)
    assert forecast.loc[t - start] == pytest.approx(float(ref.params["mu"]) / 100, rel=1e-6)
    q = forecast.quantiles(LEVELS)
    assert np.all(np.diff(q, axis=1) > 0)
    # the PIT of a quantile is its level
    assert forecast.pit(q[:, 0]) == pytest.approx(np.full(stop - start, 0.1))

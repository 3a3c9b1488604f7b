"""The forecasters a quant would use instead of the model, each seeing only past returns.

Every baseline returns next-day log-return quantiles (n, len(levels)) for target rows
start..stop-1 of a price series, the same shape the model's predictor returns, so all of them are
scored by the same code on the same rows. Row t is forecast from returns r_1..r_{t-1} only, where
r_i = log(p_i / p_{i-1}); nothing at or after the target enters its forecast.

- static empirical quantiles of the training targets' returns (one fixed distribution);
- rolling empirical quantiles of the last 60 / 250 returns;
- EWMA (RiskMetrics, lambda 0.94) normal, mean zero;
- GARCH(1,1) with Student-t errors and a constant mean (the `arch` package), refit at the first
  target of every calendar month on the previous 10 years (2,520 returns) and filtered forward
  with those parameters through the month.

numpy and scipy; `arch` is imported only by the GARCH baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Returns in the GARCH estimation window: 10 years of about 252 trading days.
GARCH_WINDOW = 2520
#: Fewer past returns than this and a GARCH fit is not attempted (a short --limit-rows slice).
GARCH_MIN_RETURNS = 250
EWMA_LAMBDA = 0.94


def log_returns(prices: np.ndarray) -> np.ndarray:
    """r[i] = log(p[i] / p[i-1]) for i >= 1; r[0] is NaN (no return before the first price)."""
    prices = np.asarray(prices, dtype=np.float64)
    r = np.full(prices.shape[0], np.nan)
    r[1:] = np.diff(np.log(prices))
    return r


def static_quantiles(
    returns: np.ndarray, train: tuple[int, int], start: int, stop: int, levels: Sequence[float]
) -> np.ndarray:
    """Empirical quantiles of the training targets' returns, the same for every target row."""
    q = np.quantile(returns[train[0] : train[1]], list(levels))
    return np.tile(q, (stop - start, 1))


def rolling_quantiles(
    returns: np.ndarray, start: int, stop: int, span: int, levels: Sequence[float]
) -> np.ndarray:
    """Empirical quantiles of the `span` returns before each target (r_{t-span}..r_{t-1})."""
    if start - span < 1:
        raise ValueError(f"target {start} has fewer than {span} past returns")
    idx = np.arange(start, stop)[:, None] + np.arange(-span, 0)[None, :]
    return np.quantile(returns[idx], list(levels), axis=1).T


def ewma_sigma(returns: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """sigma[t]: the EWMA volatility forecast for r_t from r_1..r_{t-1}.

    sigma2[t] = lam * sigma2[t-1] + (1 - lam) * r_{t-1}^2, started at sigma2[2] = r_1^2;
    sigma[0] and sigma[1] are NaN.
    """
    n = returns.shape[0]
    var = np.full(n, np.nan)
    if n > 2:
        var[2] = returns[1] ** 2
        for t in range(3, n):
            var[t] = lam * var[t - 1] + (1.0 - lam) * returns[t - 1] ** 2
    return np.sqrt(var)


def ewma_normal_quantiles(
    returns: np.ndarray, start: int, stop: int, levels: Sequence[float], lam: float = EWMA_LAMBDA
) -> np.ndarray:
    from scipy.stats import norm

    sigma = ewma_sigma(returns, lam)[start:stop]
    return sigma[:, None] * norm.ppf(list(levels))[None, :]


@dataclass(frozen=True, slots=True)
class GarchFit:
    """Parameters of one fit, in percent returns (arch's convention for a well-scaled optimiser)."""

    first_target: int
    mu: float
    omega: float
    alpha: float
    beta: float
    nu: float
    observations: int


@dataclass(frozen=True, slots=True)
class GarchForecast:
    """Per target row: location and scale of the next return (decimal), the t's degrees of
    freedom; and the fits that made them."""

    loc: np.ndarray
    scale: np.ndarray
    nu: np.ndarray
    fits: list[GarchFit]

    def quantiles(self, levels: Sequence[float]) -> np.ndarray:
        """mu + sigma * t_nu^-1(q) * sqrt((nu - 2) / nu): arch's standardised (unit-variance) t."""
        from scipy.stats import t as student_t

        q = np.asarray(levels, dtype=np.float64)[None, :]
        nu = self.nu[:, None]
        z = student_t.ppf(q, nu) * np.sqrt((nu - 2.0) / nu)
        return np.asarray(self.loc[:, None] + self.scale[:, None] * z)

    def pit(self, realised: np.ndarray) -> np.ndarray:
        """The forecast CDF at the realised return: uniform on (0, 1) if the model is right."""
        from scipy.stats import t as student_t

        z = (realised - self.loc) / self.scale / np.sqrt((self.nu - 2.0) / self.nu)
        return np.asarray(student_t.cdf(z, self.nu))


def garch_t_forecast(
    returns: np.ndarray,
    dates: np.ndarray,
    start: int,
    stop: int,
    window: int = GARCH_WINDOW,
) -> GarchForecast:
    """GARCH(1,1)-t forecasts for targets start..stop-1, refit at each month's first target.

    A fit at target t uses r_{t-window}..r_{t-1} (fewer if the series is shorter). Its one-step
    variance for t comes from the fitted recursion; later targets in the month extend the same
    recursion with the realised returns, parameters fixed:
        sigma2_t = omega + alpha * (r_{t-1} - mu)^2 + beta * sigma2_{t-1}.
    """
    from arch import arch_model

    months = dates.astype("datetime64[M]")
    n = stop - start
    loc, scale, nu = np.empty(n), np.empty(n), np.empty(n)
    fits: list[GarchFit] = []
    t = start
    while t < stop:
        first = max(1, t - window)
        if t - first < GARCH_MIN_RETURNS:
            raise ValueError(f"target {t} has only {t - first} past returns for a GARCH fit")
        sample = 100.0 * returns[first:t]
        result = arch_model(sample, mean="Constant", vol="GARCH", p=1, q=1, dist="t").fit(
            disp="off", show_warning=False
        )
        p = result.params
        fit = GarchFit(
            first_target=t,
            mu=float(p["mu"]),
            omega=float(p["omega"]),
            alpha=float(p["alpha[1]"]),
            beta=float(p["beta[1]"]),
            nu=float(p["nu"]),
            observations=int(sample.shape[0]),
        )
        fits.append(fit)
        var = float(np.asarray(result.conditional_volatility)[-1]) ** 2
        end = t
        while end < stop and months[end] == months[t]:
            end += 1
        for s in range(t, end):
            eps = 100.0 * returns[s - 1] - fit.mu
            var = fit.omega + fit.alpha * eps * eps + fit.beta * var
            loc[s - start] = fit.mu / 100.0
            scale[s - start] = math.sqrt(var) / 100.0
            nu[s - start] = fit.nu
        t = end
    return GarchForecast(loc=loc, scale=scale, nu=nu, fits=fits)


def trailing_volatility(returns: np.ndarray, start: int, stop: int, span: int = 20) -> np.ndarray:
    """Standard deviation of the `span` returns before each target: known when forecasting."""
    idx = np.arange(start, stop)[:, None] + np.arange(-span, 0)[None, :]
    return np.asarray(np.std(returns[idx], axis=1, ddof=1))

"""The evaluation's statistics against hand-computed and textbook values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.stats import (
    christoffersen_independence,
    diebold_mariano,
    kupiec,
    newey_west_lag,
    newey_west_variance,
    pinball,
    winkler,
)

scipy_stats = pytest.importorskip("scipy.stats")


def test_winkler_is_the_width_plus_two_over_alpha_times_the_miss() -> None:
    lower, upper = np.array([10.0, 10.0, 10.0]), np.array([20.0, 20.0, 20.0])
    actual = np.array([15.0, 5.0, 22.0])
    # inside: the width; 5 below: 10 + (2 / 0.2) * 5; 2 above: 10 + 10 * 2
    assert winkler(lower, upper, actual, 0.2).tolist() == pytest.approx([10.0, 60.0, 30.0])


def test_pinball_by_hand() -> None:
    q = np.array([[9.0, 10.0, 11.0], [9.0, 10.0, 11.0]])
    # y = 10: 0.1 * 1 + 0 + 0.1 * 1; y = 12: 0.1 * 3 + 0.5 * 2 + 0.9 * 1
    losses = pinball(q, np.array([10.0, 12.0]), (0.1, 0.5, 0.9))
    assert losses.tolist() == pytest.approx([0.2 / 3, 2.2 / 3])


def test_kupiec_by_hand() -> None:
    exact = kupiec(2, 10, 0.2)  # the observed rate is the null rate: no evidence at all
    assert exact["lr"] == pytest.approx(0.0) and exact["p_value"] == pytest.approx(1.0)
    none = kupiec(0, 10, 0.2)  # LR = -2 * 10 * log(0.8); chi2(1) tail = erfc(sqrt(LR / 2))
    lr = -20 * math.log(0.8)
    assert none["lr"] == pytest.approx(lr)
    assert none["p_value"] == pytest.approx(math.erfc(math.sqrt(lr / 2)))


@pytest.mark.parametrize(
    ("n", "accepted", "rejected"),
    # Jorion, Value at Risk (3rd ed.), table 6-3, p = 0.01 at 95 %: T = 255: N < 7 (N = 0 sits on the edge: LR 5.13, left out);
    # T = 510: 1 < N < 11; T = 1000: 4 < N < 17.
    [(255, [1, 6], [7]), (510, [2, 10], [1, 11]), (1000, [5, 16], [4, 17])],
)
def test_kupiec_non_rejection_regions_of_the_textbook(
    n: int, accepted: list[int], rejected: list[int]
) -> None:
    for x in accepted:
        assert kupiec(x, n, 0.01)["p_value"] > 0.05, x
    for x in rejected:
        assert kupiec(x, n, 0.01)["p_value"] < 0.05, x


def test_christoffersen_by_hand() -> None:
    seq = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 1])
    # transitions 01 11 10 00 01 10 00 01 11: n00 = 2, n01 = 3, n10 = 2, n11 = 2
    out = christoffersen_independence(seq)
    assert (out["n00"], out["n01"], out["n10"], out["n11"]) == (2, 3, 2, 2)
    null = 4 * math.log(4 / 9) + 5 * math.log(5 / 9)
    alt = 2 * math.log(2 / 5) + 3 * math.log(3 / 5) + 2 * math.log(1 / 2) + 2 * math.log(1 / 2)
    assert out["lr"] == pytest.approx(-2 * (null - alt))
    assert out["p_value"] == pytest.approx(math.erfc(math.sqrt(out["lr"] / 2)))


def test_christoffersen_sees_clustered_misses_and_not_scattered_ones() -> None:
    clustered = np.zeros(1000, dtype=int)
    clustered[100:150] = 1
    clustered[600:650] = 1
    assert christoffersen_independence(clustered)["p_value"] < 1e-6
    rng = np.random.default_rng(0)
    scattered = (rng.random(1000) < 0.1).astype(int)
    assert christoffersen_independence(scattered)["p_value"] > 0.05
    assert christoffersen_independence(np.zeros(50, dtype=int))["p_value"] == 1.0


def test_newey_west_by_hand() -> None:
    d = np.array([1.0, 2.0, 3.0, 4.0])
    # deviations -1.5 -0.5 0.5 1.5: gamma0 = 5 / 4, gamma1 = 1.25 / 4; Bartlett weight 1/2
    assert newey_west_variance(d, 0) == pytest.approx(1.25)
    assert newey_west_variance(d, 1) == pytest.approx(1.25 + 2 * 0.5 * 0.3125)
    assert newey_west_lag(2786) == 8 and newey_west_lag(100) == 4


def test_diebold_mariano_without_lags_is_the_one_sample_t_test() -> None:
    # h = 1, lag 0: DM * sqrt((n - 1) / n) with a 1/n variance is exactly Student's t statistic
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(1.2, 1.0, 200)
    out = diebold_mariano(a, b, lag=0)
    ref = scipy_stats.ttest_1samp(a - b, 0.0)
    assert out["statistic"] == pytest.approx(float(ref.statistic))
    assert out["p_value"] == pytest.approx(float(ref.pvalue))
    assert out["mean_diff"] == pytest.approx(float(np.mean(a - b)))


def test_diebold_mariano_hln_factor_and_newey_west() -> None:
    rng = np.random.default_rng(2)
    d = np.cumsum(rng.normal(0, 1, 300)) * 0.01 + rng.normal(0.1, 1, 300)  # autocorrelated
    out = diebold_mariano(d, np.zeros(300), horizon=2, lag=5)
    n = 300
    dm = float(np.mean(d)) / math.sqrt(newey_west_variance(d, 5) / n)
    hln = dm * math.sqrt((n + 1 - 4 + 2 / n) / n)
    assert out["statistic"] == pytest.approx(hln)
    assert out["p_value"] == pytest.approx(2 * float(scipy_stats.t.sf(abs(hln), n - 1)))
    # equal losses: no difference to test
    assert math.isnan(diebold_mariano(np.ones(10), np.ones(10))["p_value"])

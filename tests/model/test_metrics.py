"""Evaluation arithmetic: the split reproduces the data README's persistence baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.data import GOLD_CSV, load_prices
from models.metrics import binomial_two_sided_p, forecast_metrics
from models.split import chronological_split


def test_test_rows_and_persistence_match_the_data_readme() -> None:
    series = load_prices(GOLD_CSV)
    split = chronological_split(len(series), 60)
    start, stop = split.test
    assert stop - start == 2786
    assert str(series.dates[start]) == "2012-04-26"
    assert str(series.dates[stop - 1]) == "2023-05-09"
    # training and validation end where the next part begins: no row is in two parts
    assert split.train[1] == split.validation[0] and split.validation[1] == split.test[0]
    last = series.prices[start - 1 : stop - 1]
    actual = series.prices[start:stop]
    # a zero-quantile model is persistence; its numbers are the README's baseline
    metrics = forecast_metrics(last, actual, np.zeros((stop - start, 3)), 0.8)
    assert round(metrics["persistence"]["mae"], 2) == 9.85
    assert round(metrics["persistence"]["rmse"], 2) == 13.90
    assert round(metrics["persistence"]["mape_pct"], 3) == 0.665
    assert metrics["model"]["mase"] == pytest.approx(1.0)
    assert metrics["direction"]["trials"] == 0  # persistence never predicts a move


def test_binomial_p_value_is_exact() -> None:
    assert binomial_two_sided_p(0, 10) == pytest.approx(2 / 1024)
    assert binomial_two_sided_p(10, 10) == pytest.approx(2 / 1024)
    assert binomial_two_sided_p(5, 10) == 1.0
    # P(X <= 2) for n=10: (1 + 10 + 45) / 1024, two-sided
    assert binomial_two_sided_p(2, 10) == pytest.approx(2 * 56 / 1024)
    # large n agrees with the normal approximation to within its error
    n, k = 2786, 1450
    z = (k - n / 2) / math.sqrt(n / 4)
    normal = math.erfc(abs(z) / math.sqrt(2))
    assert binomial_two_sided_p(k, n) == pytest.approx(normal, rel=0.1)


def test_interval_coverage_and_direction_count() -> None:
    last = np.array([100.0, 100.0, 100.0, 100.0])
    actual = np.array([101.0, 99.0, 105.0, 100.0])
    q = np.log(np.array([[0.98, 1.005, 1.02]] * 4))
    m = forecast_metrics(last, actual, q, 0.8)
    assert m["interval"]["coverage"] == pytest.approx(0.75)  # 105 is outside
    # up forecasts: right on 101 and 105, wrong on 99; the unchanged day is not scored
    assert (m["direction"]["hits"], m["direction"]["trials"]) == (2, 3)

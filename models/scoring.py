"""A predictor's accuracy on a range of target rows, shared by training (the manifest's metrics)
and evaluation (the report). numpy only: no TensorFlow, no command-line code."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.metrics import forecast_metrics
from models.split import windows_for
from stream.predictor import quantile_columns


def score_split(
    predictor: Any, prices: np.ndarray, bounds: tuple[int, int], *, raw: bool = False
) -> Any:
    """Metrics of `predictor` on targets bounds[0]..bounds[1]-1 (and, if raw, the arrays)."""
    start, stop = bounds
    windows = windows_for(prices, start, stop, predictor.window)
    quantiles = predictor.predict_batch(windows)
    last = prices[start - 1 : stop - 1]
    actual = prices[start:stop]
    # the interval's columns and the median, found by level (a model may have more quantiles)
    columns = list(quantile_columns(predictor.quantiles, predictor.interval))
    metrics = forecast_metrics(last, actual, quantiles[:, columns], predictor.interval)
    if raw:
        return metrics, last, actual, quantiles
    return metrics

"""The chronological split and the model's view of a price series. numpy only, no TensorFlow.

Rows are trading days. A *target* row t (t >= window) is predicted from the window of the `window`
prices before it, rows t-window .. t-1. Targets are split in time order:

    train targets | validation targets | test targets = the last `test_fraction` of all rows

On the gold series the test targets are the last 2,786 rows, 2012-04-26 to 2023-05-09: the rows of
the persistence baseline in the data README. Windows of the first test targets reach back into the
validation rows; that is the history a live forecaster would have seen, never a test target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data import PriceSeries

TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1


@dataclass(frozen=True, slots=True)
class Split:
    """Target-row index ranges [start, stop) into the series."""

    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int]

    def describe(self, series: PriceSeries) -> dict[str, dict[str, object]]:
        def part(bounds: tuple[int, int]) -> dict[str, object]:
            start, stop = bounds
            return {
                "first_target": str(series.dates[start]),
                "last_target": str(series.dates[stop - 1]),
                "targets": stop - start,
            }

        return {
            "train": part(self.train),
            "validation": part(self.validation),
            "test": part(self.test),
        }


def chronological_split(
    rows: int,
    window: int,
    test_fraction: float = TEST_FRACTION,
    validation_fraction: float = VALIDATION_FRACTION,
) -> Split:
    n_test = int(rows * test_fraction)
    n_val = int(rows * validation_fraction)
    val_start = rows - n_test - n_val
    if n_test < 1 or n_val < 1 or val_start - window < 1:
        raise ValueError(
            f"{rows} rows are too few for a window of {window} with"
            f" {test_fraction:.0%} test and {validation_fraction:.0%} validation rows"
        )
    return Split(
        train=(window, val_start), validation=(val_start, rows - n_test), test=(rows - n_test, rows)
    )


def windows_for(prices: np.ndarray, start: int, stop: int, window: int) -> np.ndarray:
    """Raw price windows (stop-start, window) for targets start..stop-1 (a copy, float64)."""
    idx = np.arange(start, stop)[:, None] + np.arange(-window, 0)[None, :]
    return np.asarray(prices[idx], dtype=np.float64)


def relative_log(windows: np.ndarray) -> np.ndarray:
    """The model input transform: log(p_i / p_last) per window, float64 (n, window)."""
    return np.log(windows / windows[:, -1:])


def target_log_returns(prices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """log(p_t / p_{t-1}) for targets start..stop-1."""
    return np.log(prices[start:stop] / prices[start - 1 : stop - 1])

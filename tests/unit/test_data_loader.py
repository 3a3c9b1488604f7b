"""The price CSV loader: one clear message per kind of bad file, naming file, line and value."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from models.data import GOLD_CSV, load_prices
from stream.errors import DataError

HEADER = "date,price\n"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "prices.csv"
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_reads_a_good_file(tmp_path: Path) -> None:
    series = load_prices(write(tmp_path, "2024-01-02,10.5\n2024-01-03,11\n\n"))
    assert series.dates.tolist() == [np.datetime64("2024-01-02"), np.datetime64("2024-01-03")]
    assert series.prices.tolist() == [10.5, 11.0]
    assert series.prices.dtype == np.float64


def test_reads_the_shipped_gold_series() -> None:
    series = load_prices(GOLD_CSV)
    assert len(series) == 13_932
    assert str(series.dates[0]) == "1968-04-01"
    assert str(series.dates[-1]) == "2023-05-09"
    assert series.prices[-1] == pytest.approx(2025.60)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("2024-01-02,10\n2024/01/03,11\n", r"line 3: cannot parse date '2024/01/03'"),
        ("2024-01-02,10\n2024-02-30,11\n", r"line 3: cannot parse date '2024-02-30'"),
        ("2024-01-02,10\n2024-01-03,0\n", r"line 3: price '0' must be a finite number > 0"),
        ("2024-01-02,-3.5\n", r"line 2: price '-3.5' must be a finite number > 0"),
        ("2024-01-02,nan\n", r"line 2: price 'nan' must be a finite number > 0"),
        ("2024-01-02,10\n2024-01-03,\n", r"line 3: missing price"),
        ("2024-01-02\n", r"line 2: missing price"),
        ("2024-01-02,ten\n", r"line 2: price 'ten' is not a number"),
        ("2024-01-02,10\n2024-01-02,11\n", r"line 3: duplicate date 2024-01-02"),
        (
            "2024-01-03,10\n2024-01-02,11\n",
            r"line 3: date 2024-01-02 is before the previous row's 2024-01-03",
        ),
    ],
)
def test_bad_rows_name_file_line_and_value(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(DataError, match=expected) as info:
        load_prices(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"price file not found: .*nope\.csv"):
        load_prices(tmp_path / "nope.csv")


def test_header_only_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data rows"):
        load_prices(write(tmp_path, ""))


def test_loader_does_not_import_tensorflow() -> None:
    # `tickcast replay` reads CSVs through this module and must start without TensorFlow.
    import subprocess

    code = "import sys, models.data; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

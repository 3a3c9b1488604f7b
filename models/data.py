"""Load a CSV of daily prices: a header row, then `date,price` rows (YYYY-MM-DD, a positive number).

Used by training and evaluation and by `tickcast replay`, so it stays on numpy and the csv module
and never imports TensorFlow. Every problem is a `DataError` naming the file, the line and the
value, because the user pointed us at the file and needs to find the row to fix.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import DataError

#: The gold series shipped with the package (see models/data/DATA.md for source and terms).
GOLD_CSV = Path(__file__).resolve().parent / "data" / "gold_usd_daily.csv"


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Dates (numpy datetime64[D]) and prices (float64), sorted by date, no duplicates."""

    source: str
    dates: np.ndarray
    prices: np.ndarray

    def __len__(self) -> int:
        return int(self.prices.shape[0])

    def head(self, rows: int) -> PriceSeries:
        return PriceSeries(self.source, self.dates[:rows], self.prices[:rows])

    def tail(self, rows: int) -> PriceSeries:
        return PriceSeries(self.source, self.dates[-rows:], self.prices[-rows:])


def load_prices(path: str | Path) -> PriceSeries:
    """Read `path`; raise DataError on an unreadable file or any bad row."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"price file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read price file {path}: {exc.strerror}") from None

    dates: list[dt.date] = []
    prices: list[float] = []
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (expected a header row, then date,price)")
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines (a trailing newline, say) carry nothing
                date = _parse_date(path, line, row[0])
                price = _parse_price(path, line, row[1] if len(row) > 1 else "")
                if dates:
                    if date == dates[-1]:
                        raise DataError(f"{path}, line {line}: duplicate date {date.isoformat()}")
                    if date < dates[-1]:
                        raise DataError(
                            f"{path}, line {line}: date {date.isoformat()} is before the previous"
                            f" row's {dates[-1].isoformat()}; rows must be sorted by date"
                        )
                dates.append(date)
                prices.append(price)
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None

    if not prices:
        raise DataError(f"{path}: no data rows after the header")
    return PriceSeries(
        source=str(path),
        dates=np.array(dates, dtype="datetime64[D]"),
        prices=np.array(prices, dtype=np.float64),
    )


def select_rows(path: str | Path, limit_rows: int | None) -> PriceSeries:
    """The rows `tickcast train` and `tickcast evaluate` work on: all of `path`, or its last
    `limit_rows` (the chronological split then applies to those rows)."""
    series = load_prices(path)
    if limit_rows is not None:
        if limit_rows < 2:
            raise DataError(f"--limit-rows must be at least 2, got {limit_rows}")
        series = series.tail(limit_rows)
    return series


def _parse_date(path: Path, line: int, text: str) -> dt.date:
    value = text.strip()
    try:
        if len(value) != 10:
            raise ValueError
        return dt.date.fromisoformat(value)
    except ValueError:
        raise DataError(
            f"{path}, line {line}: cannot parse date {text!r} (expected YYYY-MM-DD)"
        ) from None


def _parse_price(path: Path, line: int, text: str) -> float:
    value = text.strip()
    if not value:
        raise DataError(f"{path}, line {line}: missing price")
    try:
        price = float(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: price {text!r} is not a number") from None
    if not math.isfinite(price) or price <= 0:
        raise DataError(f"{path}, line {line}: price {text!r} must be a finite number > 0")
    return price

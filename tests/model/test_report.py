"""The report says plainly where GARCH-t beats the model and where it does not."""

from __future__ import annotations

from typing import Any

from models.evaluate import garch_comparison


def forecaster(winkler: float, pinball: float, mae: float, coverage: float, p: float) -> Any:
    test = {"p_value": p}
    return {
        "point": {"mae": mae},
        "pinball": pinball,
        "interval": {
            "winkler": winkler,
            "coverage": coverage,
            "kupiec": test,
            "kupiec_lower": test,
            "kupiec_upper": test,
            "christoffersen": test,
            "coverage_top_vol_fifth": coverage,
        },
    }


def test_garch_comparison_names_the_winner_of_each_measure() -> None:
    part = {
        "forecasters": {
            "model": forecaster(47.0, 3.21, 9.84, 0.79, 0.5),
            "garch_t": forecaster(47.2, 3.20, 9.87, 0.80, 0.7),
        },
        "dm": {"garch_t": {"winkler": {"mean_diff": -0.2, "p_value": 0.3}}},
    }
    (line,) = garch_comparison(part, 0.8)
    better, worse = line.split("GARCH-t is better on:")
    assert "Winkler score" in better and "MAE" in better
    assert "pinball loss" in worse and "coverage error" in worse and "Christoffersen p" in worse
    assert "Winkler score" not in worse
    assert line.endswith("(not significant at 5 %).")

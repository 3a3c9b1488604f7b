"""`tickcast evaluate`: an artifact against the baselines a quant would use, on the same rows.

The rows are those of training: the last 20 % of the rows of --data (after --limit-rows) are the
test targets, the 10 % before them the validation targets, each predicted from the window before
it. Every baseline (models/baselines.py) forecasts each target from past returns only.

Per forecaster and part (validation, test), on prices (USD for gold): MAE, RMSE, MASE of the
median; coverage, mean width and Winkler score of the model's central interval; mean pinball loss
over the levels 0.1, 0.5 and 0.9 (issue 12's target, comparable across models) and, for a model
with more levels, also over all of them; Kupiec's test overall and for each tail; Christoffersen's
independence test; coverage by calendar year and in the top fifth of days by trailing 20-day
volatility. Diebold-Mariano (HLN, Newey-West) of the model against each baseline on the Winkler
score, the pinball loss and the absolute error.

Writes model-evaluation.md, model-evaluation.json and PNG plots into --out (default docs/).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.baselines import (
    ewma_normal_quantiles,
    garch_t_forecast,
    log_returns,
    rolling_quantiles,
    static_quantiles,
    trailing_volatility,
)
from models.data import GOLD_CSV, PriceSeries, select_rows
from models.metrics import forecast_metrics
from models.split import Split, chronological_split, windows_for
from models.stats import (
    christoffersen_independence,
    diebold_mariano,
    kupiec,
    pinball,
    winkler,
)

MODEL = "model"
PERSISTENCE = "persistence"
#: Baselines in report order, with the label the table shows.
LABELS = {
    MODEL: "CNN-Bi-LSTM (this artifact)",
    "garch_t": "GARCH(1,1)-t, refit monthly, 10-year window",
    "ewma": "EWMA (lambda 0.94) normal",
    "rolling_250": "rolling 250-day empirical quantiles",
    "rolling_60": "rolling 60-day empirical quantiles",
    "static": "static empirical quantiles (training returns)",
    PERSISTENCE: "persistence (tomorrow = today)",
}
SHORT = {
    MODEL: "model",
    "garch_t": "GARCH-t",
    "ewma": "EWMA",
    "rolling_250": "rolling 250",
    "rolling_60": "rolling 60",
    "static": "static",
}
#: The levels of the pinball loss issue 12's target is set on: every model is scored on these,
#: whatever else it predicts (a model without them is scored on its own levels).
TARGET_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)
#: The fraction of days with the highest trailing 20-day volatility scored separately.
TOP_VOL_FRACTION = 0.2
PLOT_PREFIX = "model-"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact",
        default="",
        metavar="DIR",
        help="artifact folder (default: the one models/artifacts/CURRENT names)",
    )
    parser.add_argument(
        "--data", type=Path, default=GOLD_CSV, help="CSV of date,price (default: the gold series)"
    )
    parser.add_argument(
        "--limit-rows", type=int, default=None, metavar="N", help="use only the last N rows"
    )
    parser.add_argument(
        "--backend", choices=("onnx", "tensorflow"), default="onnx", help="default: onnx"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs"),
        help="report folder (default: docs/, where the repository keeps the shipped report)",
    )


def run(args: argparse.Namespace) -> int:
    from stream.config import ModelSettings
    from stream.errors import DataError
    from stream.predictor import load_predictor, read_manifest, resolve_artifact

    folder = resolve_artifact(args.artifact)
    manifest = read_manifest(folder)
    predictor = load_predictor(
        ModelSettings(path=str(folder), backend=args.backend), window_size=manifest.window
    )
    series = select_rows(args.data, args.limit_rows)
    try:
        split = chronological_split(len(series), predictor.window)
    except ValueError as exc:
        raise DataError(f"{args.data}: {exc}") from None
    try:
        report, arrays = evaluate(predictor, series, split)
    except ValueError as exc:  # a slice too short for a baseline's history
        raise DataError(f"{args.data}: {exc}") from None
    report = {
        "artifact": folder.name,
        "version": predictor.version,
        "backend": args.backend,
        "data": Path(args.data).name,
        "mix": manifest.raw.get("architecture", {}).get("mix"),
        "members": manifest.raw.get("architecture", {}).get("members", 1),
        "member_seeds": manifest.raw.get("training", {}).get("member_seeds"),
        "calibration": manifest.raw.get("calibration"),
        **report,
    }
    report["targets"] = issue_targets(report)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{PLOT_PREFIX}evaluation.json").write_text(
        json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    plots = write_plots(out, arrays, report)
    (out / f"{PLOT_PREFIX}evaluation.md").write_text(markdown(report, plots), encoding="utf-8")
    t = report["test"]
    m, g = t["forecasters"][MODEL], t["forecasters"]["garch_t"]
    print(
        f"{predictor.version} on {t['first']}..{t['last']} (n={t['n']}): MASE"
        f" {m['point']['mase']:.4f}, coverage {m['interval']['coverage']:.3f}, Winkler"
        f" {m['interval']['winkler']:.2f} vs GARCH-t {g['interval']['winkler']:.2f}"
        f" (DM p {t['dm']['garch_t']['winkler']['p_value']:.3g}), pinball"
        f" {m['pinball']:.3f} vs {g['pinball']:.3f}; report in {out}/{PLOT_PREFIX}evaluation.md"
    )
    return 0


def json_safe(value: Any) -> Any:
    """NaN (a test with nothing to test) as null: the report stays strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def forecast_all(
    predictor: Any, series: PriceSeries, split: Split, bounds: tuple[int, int]
) -> dict[str, Any]:
    """Log-return quantiles (n, k) at the model's levels for every forecaster on `bounds`."""
    prices, levels = series.prices, list(predictor.quantiles)
    start, stop = bounds
    returns = log_returns(prices)
    garch = garch_t_forecast(returns, series.dates, start, stop)
    n = stop - start
    quantiles = {
        MODEL: predictor.predict_batch(windows_for(prices, start, stop, predictor.window)),
        "garch_t": garch.quantiles(levels),
        "ewma": ewma_normal_quantiles(returns, start, stop, levels),
        "rolling_250": rolling_quantiles(returns, start, stop, 250, levels),
        "rolling_60": rolling_quantiles(returns, start, stop, 60, levels),
        "static": static_quantiles(returns, split.train, start, stop, levels),
        PERSISTENCE: np.zeros((n, len(levels))),
    }
    return {
        "quantiles": quantiles,
        "levels": levels,
        "last": prices[start - 1 : stop - 1],
        "actual": prices[start:stop],
        "returns": returns[start:stop],
        "dates": series.dates[start:stop],
        "vol20": trailing_volatility(returns, start, stop),
        "garch_pit": garch.pit(returns[start:stop]),
        "garch_fits": len(garch.fits),
    }


def score(
    q: np.ndarray,
    last: np.ndarray,
    actual: np.ndarray,
    levels: Sequence[float],
    interval: float,
    years: np.ndarray,
    top_vol: np.ndarray,
    *,
    with_interval: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One forecaster's numbers on one part, and its per-row losses (for Diebold-Mariano).

    The interval is the central `interval` (its columns found by level, not position); `pinball`
    is the mean over pinball_levels(levels) and, when the model has more levels than those,
    `pinball_all` the mean over all of them."""
    from stream.predictor import quantile_columns

    levels = list(levels)
    price_q = last[:, None] * np.exp(q)
    lo, mid, hi = quantile_columns(levels, interval)
    point = price_q[:, mid]
    base = forecast_metrics(last, actual, q[:, [lo, mid, hi]], interval)["model"]
    persistence_mae = float(np.mean(np.abs(last - actual)))
    losses: dict[str, np.ndarray] = {"abs_error": np.abs(point - actual)}
    result: dict[str, Any] = {
        "point": {
            "mae": base["mae"],
            "rmse": base["rmse"],
            "mase": base["mae"] / persistence_mae,
        }
    }
    if not with_interval:
        return result, losses
    lower, upper = price_q[:, lo], price_q[:, hi]
    alpha = 1.0 - interval
    below, above = actual < lower, actual > upper
    miss = below | above
    n = actual.shape[0]
    w = winkler(lower, upper, actual, alpha)
    target = pinball_levels(levels)
    cols = [levels.index(x) for x in target]
    pb = pinball(price_q[:, cols], actual, target)
    losses["winkler"] = w
    losses["pinball"] = pb
    if len(target) < len(levels):
        losses["pinball_all"] = pinball(price_q, actual, levels)
    by_year = {
        str(y): float(np.mean(~miss[years == y])) for y in np.unique(years) if np.any(years == y)
    }
    result["interval"] = {
        "level": interval,
        "coverage": float(np.mean(~miss)),
        "below": float(np.mean(below)),
        "above": float(np.mean(above)),
        "mean_width": float(np.mean(upper - lower)),
        "winkler": float(np.mean(w)),
        "kupiec": kupiec(int(np.sum(miss)), n, alpha),
        "kupiec_lower": kupiec(int(np.sum(below)), n, levels[lo]),
        "kupiec_upper": kupiec(int(np.sum(above)), n, 1.0 - levels[hi]),
        "christoffersen": christoffersen_independence(miss.astype(np.int64)),
        "coverage_top_vol_fifth": float(np.mean(~miss[top_vol])),
        "coverage_by_year": by_year,
    }
    result["pinball"] = float(np.mean(pb))
    if "pinball_all" in losses:
        result["pinball_all"] = float(np.mean(losses["pinball_all"]))
    # the share of realised prices below each quantile: level q should see a share near q
    result["share_below"] = {
        f"{lv:g}": float(np.mean(actual < price_q[:, i])) for i, lv in enumerate(levels)
    }
    return result, losses


def pinball_levels(levels: Sequence[float]) -> list[float]:
    """The levels `pinball` is the mean over: 0.1, 0.5 and 0.9 (issue 12's target), as the
    model spells them, when it has all three; otherwise all its own levels."""
    levels = list(levels)
    found = [next((x for x in levels if abs(x - t) < 1e-9), None) for t in TARGET_LEVELS]
    return levels if any(x is None for x in found) else [x for x in found if x is not None]


def evaluate(predictor: Any, series: PriceSeries, split: Split) -> tuple[dict[str, Any], Any]:
    """The report (JSON-ready) for validation and test parts, and the test arrays for plots."""
    report: dict[str, Any] = {
        "quantiles": list(predictor.quantiles),
        "interval": predictor.interval,
        "pinball_levels": pinball_levels(predictor.quantiles),
        "methods": {
            "rows": "each forecaster sees only returns before its target row",
            "pinball": "mean over the levels 0.1, 0.5 and 0.9 (issue 12's target; a model"
            " without them: over its own levels), in price units; every baseline at the same"
            " levels",
            "pinball_all": "(a model with more levels) mean over all the model's levels, every"
            " baseline at those levels",
            "winkler": "width + (2 / alpha) * miss distance, alpha = 1 - interval level",
            "diebold_mariano": "d = model loss - baseline loss (negative: model better);"
            " Newey-West (Bartlett) variance, lag floor(4 (n/100)^(2/9)); HLN correction;"
            " two-sided p from Student t(n-1)",
            "top_vol_fifth": "the fifth of target days with the highest standard deviation of the"
            " 20 returns before the target (known when forecasting)",
            "garch_t": "arch: constant mean, GARCH(1,1), Student t; refit at each month's first"
            " target on the 2,520 returns before it; filtered forward with fixed parameters",
        },
    }
    arrays: dict[str, Any] = {}
    for part, bounds in (("validation", split.validation), ("test", split.test)):
        f = forecast_all(predictor, series, split, bounds)
        years = f["dates"].astype("datetime64[Y]").astype(int) + 1970
        cut = np.quantile(f["vol20"], 1.0 - TOP_VOL_FRACTION)
        top_vol = f["vol20"] >= cut
        forecasters: dict[str, Any] = {}
        losses: dict[str, dict[str, np.ndarray]] = {}
        for name in LABELS:
            forecasters[name], losses[name] = score(
                f["quantiles"][name],
                f["last"],
                f["actual"],
                f["levels"],
                predictor.interval,
                years,
                top_vol,
                with_interval=name != PERSISTENCE,
            )
        dm: dict[str, Any] = {}
        for name in LABELS:
            if name == MODEL:
                continue
            dm[name] = {
                loss: diebold_mariano(losses[MODEL][loss], losses[name][loss])
                for loss in losses[name]
            }
        report[part] = {
            "first": str(f["dates"][0]),
            "last": str(f["dates"][-1]),
            "n": int(f["actual"].shape[0]),
            "garch_fits": f["garch_fits"],
            "year_n": {str(y): int(np.sum(years == y)) for y in np.unique(years)},
            "top_vol_fifth_threshold": float(cut),
            "forecasters": forecasters,
            "dm": dm,
        }
        arrays[part] = f
    return report, arrays


def issue_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets on the test rows (gold series), each with the figure and pass/fail."""
    t = report["test"]
    m = t["forecasters"][MODEL]
    iv = m["interval"]
    v_iv = report["validation"]["forecasters"][MODEL]["interval"]
    dm_g = t["dm"]["garch_t"]["winkler"]
    rows = [
        (
            "Winkler <= 46.9 with DM p < 0.05 against GARCH-t",
            f"{iv['winkler']:.2f}, DM p {dm_g['p_value']:.3g}",
            iv["winkler"] <= 46.9 and dm_g["p_value"] < 0.05 and dm_g["mean_diff"] < 0,
        ),
        ("mean pinball <= 3.20", f"{m['pinball']:.3f}", m["pinball"] <= 3.20),
        (
            "coverage 0.785-0.815, Kupiec p > 0.05 overall and each tail",
            f"{iv['coverage']:.3f}; p {iv['kupiec']['p_value']:.3g},"
            f" lower {iv['kupiec_lower']['p_value']:.3g}, upper {iv['kupiec_upper']['p_value']:.3g}",
            0.785 <= iv["coverage"] <= 0.815
            and min(
                iv["kupiec"]["p_value"],
                iv["kupiec_lower"]["p_value"],
                iv["kupiec_upper"]["p_value"],
            )
            > 0.05,
        ),
        (
            "Christoffersen independence p > 0.05 (validation and test)",
            f"validation {v_iv['christoffersen']['p_value']:.3g},"
            f" test {iv['christoffersen']['p_value']:.3g}",
            min(v_iv["christoffersen"]["p_value"], iv["christoffersen"]["p_value"]) > 0.05,
        ),
        (
            "coverage 0.75-0.85 in the top volatility fifth",
            f"{iv['coverage_top_vol_fifth']:.3f}",
            0.75 <= iv["coverage_top_vol_fifth"] <= 0.85,
        ),
        ("MASE <= 1.00", f"{m['point']['mase']:.4f}", m["point"]["mase"] <= 1.0),
    ]
    return [{"target": a, "measured": b, "met": bool(c)} for a, b, c in rows]


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None or p != p else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def garch_comparison(part: dict[str, Any], level: float) -> list[str]:
    """Where GARCH-t beats the model on these rows, and where the model beats GARCH-t, said
    plainly (lower loss, coverage nearer the level, larger test p-values are better)."""
    m, g = part["forecasters"][MODEL], part["forecasters"]["garch_t"]
    mi, gi = m["interval"], g["interval"]
    checks = [
        ("Winkler score", mi["winkler"], gi["winkler"], True),
        ("pinball loss", m["pinball"], g["pinball"], True),
        ("MAE", m["point"]["mae"], g["point"]["mae"], True),
        ("coverage error", abs(mi["coverage"] - level), abs(gi["coverage"] - level), True),
        ("Kupiec p", mi["kupiec"]["p_value"], gi["kupiec"]["p_value"], False),
        (
            "Kupiec p lower tail",
            mi["kupiec_lower"]["p_value"],
            gi["kupiec_lower"]["p_value"],
            False,
        ),
        (
            "Kupiec p upper tail",
            mi["kupiec_upper"]["p_value"],
            gi["kupiec_upper"]["p_value"],
            False,
        ),
        (
            "Christoffersen p",
            mi["christoffersen"]["p_value"],
            gi["christoffersen"]["p_value"],
            False,
        ),
        (
            "top-volatility coverage error",
            abs(mi["coverage_top_vol_fifth"] - level),
            abs(gi["coverage_top_vol_fifth"] - level),
            True,
        ),
    ]
    model_wins = [name for name, a, b, lower in checks if (a < b if lower else a > b)]
    garch_wins = [name for name, a, b, lower in checks if (b < a if lower else b > a)]
    dm = part["dm"]["garch_t"]["winkler"]
    return [
        f"Against GARCH-t on these rows the model is better on: {', '.join(model_wins) or 'none'};"
        f" GARCH-t is better on: {', '.join(garch_wins) or 'none'}. The Winkler difference"
        f" {dm['mean_diff']:+.3f} has DM p {_fmt_p(dm['p_value'])}"
        + (" (significant at 5 %)." if dm["p_value"] < 0.05 else " (not significant at 5 %)."),
    ]


def part_table(part: dict[str, Any]) -> list[str]:
    wide = "pinball_all" in part["forecasters"][MODEL]
    lines = [
        "| forecaster | MAE | RMSE | MASE | coverage | below / above | mean width | Winkler"
        " | pinball | "
        + ("pinball (all levels) | " if wide else "")
        + "Kupiec p (all / low / high) | Christoffersen p | top-vol coverage"
        " | DM p Winkler (vs model) |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if wide else "") + "---|---|---|---|",
    ]
    for name, label in LABELS.items():
        f = part["forecasters"][name]
        p = f["point"]
        row = f"| {label} | {p['mae']:.3f} | {p['rmse']:.3f} | {p['mase']:.4f} |"
        if "interval" in f:
            iv = f["interval"]
            dm = part["dm"].get(name, {}).get("winkler")
            dm_text = "" if dm is None else f"{_fmt_p(dm['p_value'])} ({dm['mean_diff']:+.2f})"
            row += (
                f" {iv['coverage']:.3f} | {iv['below']:.3f} / {iv['above']:.3f} |"
                f" {iv['mean_width']:.2f} | {iv['winkler']:.2f} | {f['pinball']:.3f} |"
                + (f" {f['pinball_all']:.3f} |" if wide else "")
                + f" {_fmt_p(iv['kupiec']['p_value'])} / {_fmt_p(iv['kupiec_lower']['p_value'])}"
                f" / {_fmt_p(iv['kupiec_upper']['p_value'])} |"
                f" {_fmt_p(iv['christoffersen']['p_value'])} |"
                f" {iv['coverage_top_vol_fifth']:.3f} | {dm_text} |"
            )
        else:
            dm = part["dm"][name]["abs_error"]
            row += (
                " - | - | - | - | - | - | - | - | "
                + ("- | " if wide else "")
                + "DM p absolute error"
                f" {_fmt_p(dm['p_value'])} ({dm['mean_diff']:+.3f}) |"
            )
        lines.append(row)
    return lines


def pinball_note(report: dict[str, Any]) -> str:
    """What the pinball columns are the mean over."""
    levels = report.get("pinball_levels", report["quantiles"])
    text = f"Pinball: the mean over the levels {', '.join(f'{q:g}' for q in levels)}"
    if len(levels) == len(report["quantiles"]):
        return text + "."
    return (
        text + " (issue 12's target is set on these), every baseline at the same levels;"
        " pinball (all levels): the mean over all the model's levels, every baseline at those."
    )


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    t, v = report["test"], report["validation"]
    level = report["interval"]
    lines = [
        f"# Evaluation of model {report['version']}",
        "",
        f"Data {report['data']}, {report['backend']} backend. Quantiles"
        f" {', '.join(f'{q:g}' for q in report['quantiles'])}; the interval is the"
        f" {level:.0%} one between the {(1 - level) / 2:g} and {(1 + level) / 2:g} quantiles."
        " Prices in the data's unit (USD for gold). " + pinball_note(report),
        "Every baseline forecasts each target from the returns before it only. DM p: Diebold-"
        "Mariano, HLN-corrected, Newey-West; in brackets the mean loss difference model minus"
        " baseline (negative: the model is better).",
    ]
    members = int(report.get("members") or 1)
    if members > 1:
        seeds = report.get("member_seeds") or []
        lines.append(
            f"The CNN-Bi-LSTM is an ensemble of {members} networks trained apart (seeds"
            f" {', '.join(str(x) for x in seeds)}, those with the lowest validation loss), their"
            " quantiles averaged inside the graph."
        )
    if report.get("mix") is not None:
        lines.append(
            f"The model's quantiles are {report['mix']:g} x CNN-Bi-LSTM + {1 - report['mix']:g} x"
            " its volatility branch (mix chosen on the validation rows)."
        )
    cal = report.get("calibration") or {}
    if cal.get("method", "none") != "none":
        if cal["lower"] == cal["upper"]:
            lines.append(
                "Conformal calibration on the validation rows: both gaps x"
                f" {cal['lower']:.4f}, one factor for the interval (inside the model)."
            )
        else:
            lines.append(
                f"Conformal calibration on the validation rows: lower gap x {cal['lower']:.4f},"
                f" upper gap x {cal['upper']:.4f} (inside the model)."
            )
    lines += [
        "",
        f"## Test rows: {t['first']} to {t['last']}, n = {t['n']} (held out)",
        "",
        *part_table(t),
        "",
    ]
    if "garch_t" in t["forecasters"]:
        m = t["forecasters"][MODEL]
        lines += [
            "Diebold-Mariano of the model against each baseline (test rows), p (mean diff):",
            "",
        ]
        dm_losses = ["winkler", "pinball", "abs_error"]
        if "pinball_all" in m:
            dm_losses.insert(2, "pinball_all")
            lines += ["| baseline | Winkler | pinball | pinball (all levels) | absolute error |"]
            lines += ["|---|---|---|---|---|"]
        else:
            lines += ["| baseline | Winkler | pinball | absolute error |", "|---|---|---|---|"]
        for name in LABELS:
            if name == MODEL:
                continue
            cells = []
            for loss in dm_losses:
                d = t["dm"][name].get(loss)
                cells.append(
                    "-" if d is None else f"{_fmt_p(d['p_value'])} ({d['mean_diff']:+.3f})"
                )
            lines.append(f"| {LABELS[name]} | {' | '.join(cells)} |")
        lines.append("")
        share = ", ".join(f"{k}: {x:.3f}" for k, x in m["share_below"].items())
        lines += [f"Share of test prices below each model quantile: {share}.", ""]
    if "garch_t" in t["forecasters"]:
        lines += [*garch_comparison(t, level), ""]
    if report.get("targets"):
        lines += ["### Issue 12's targets on the test rows", "", "| target | measured | met |"]
        lines.append("|---|---|---|")
        for row in report["targets"]:
            lines.append(
                f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'no'} |"
            )
        lines.append("")
    lines += [f"## Validation rows: {v['first']} to {v['last']}, n = {v['n']}", "", *part_table(v)]
    lines += ["", "## Coverage by year", ""]
    names = [MODEL, "garch_t", "ewma", "rolling_250"]
    lines.append("| year | n | " + " | ".join(SHORT[x] for x in names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for part in (v, t):
        for year, _cov in part["forecasters"][MODEL]["interval"]["coverage_by_year"].items():
            cells = [
                f"{part['forecasters'][x]['interval']['coverage_by_year'][year]:.3f}" for x in names
            ]
            tag = " (test)" if part is t else " (validation)"
            lines.append(f"| {year}{tag} | {part['year_n'][year]} | {' | '.join(cells)} |")
    lines.append("")
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_plots(out: Path, arrays: dict[str, Any], report: dict[str, Any]) -> list[str]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = arrays["test"]
    levels = f["levels"]
    q_model = f["quantiles"][MODEL]
    q_garch = f["quantiles"]["garch_t"]
    from stream.predictor import quantile_columns

    lo, mid, hi = quantile_columns(levels, report["interval"])
    x = f["dates"].astype("datetime64[D]").astype(object)
    names: list[str] = []

    # 1. intervals vs realised returns, the last 250 test days
    span = slice(-250, None)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.fill_between(
        x[span],
        100 * q_model[span, lo],
        100 * q_model[span, hi],
        color="tab:blue",
        alpha=0.25,
        step="mid",
        label=f"model {report['interval']:.0%} interval",
    )
    for col, style in ((lo, "-"), (hi, "-")):
        ax.plot(x[span], 100 * q_garch[span, col], color="tab:red", lw=0.8, ls=style)
    ax.plot([], [], color="tab:red", lw=0.8, label="GARCH(1,1)-t interval")
    ret = 100 * f["returns"][span]
    inside = (f["returns"][span] >= q_model[span, lo]) & (f["returns"][span] <= q_model[span, hi])
    xs = np.asarray(x[span])
    ax.scatter(xs[inside], ret[inside], s=6, color="black", label="realised return")
    ax.scatter(xs[~inside], ret[~inside], s=12, color="tab:orange", label="outside model interval")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylabel("next-day log return (%)")
    ax.set_title("Intervals vs realised returns, last 250 test days")
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / f"{PLOT_PREFIX}intervals.png", dpi=110)
    plt.close(fig)
    names.append(f"{PLOT_PREFIX}intervals.png")

    # 2. coverage by year, validation and test years
    fig, ax = plt.subplots(figsize=(11, 4))
    for name, color in (
        (MODEL, "tab:blue"),
        ("garch_t", "tab:red"),
        ("ewma", "tab:green"),
        ("rolling_250", "tab:gray"),
    ):
        years: list[float] = []
        cov: list[float] = []
        val_years = set(report["validation"]["forecasters"][name]["interval"]["coverage_by_year"])
        test_years = set(report["test"]["forecasters"][name]["interval"]["coverage_by_year"])
        for part, shift in (("validation", -0.2), ("test", 0.2)):
            by_year = report[part]["forecasters"][name]["interval"]["coverage_by_year"]
            for y, c in by_year.items():  # a year split between the parts: two points
                years.append(int(y) + (shift if y in val_years & test_years else 0.0))
                cov.append(c)
        ax.plot(years, cov, marker="o", ms=3, color=color, label=SHORT[name])
    ax.axhline(report["interval"], color="black", lw=0.8, ls="--")
    test_start = int(report["test"]["first"][:4])
    ax.axvline(test_start, color="black", lw=0.6, ls=":")
    ax.text(test_start + 0.1, ax.get_ylim()[1] - 0.01, "test", va="top", fontsize=8)
    first_year, last_year = int(report["validation"]["first"][:4]), int(report["test"]["last"][:4])
    ax.set_xticks(range(first_year, last_year + 1))
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylabel("coverage")
    ax.set_title(f"{report['interval']:.0%} interval coverage by calendar year")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{PLOT_PREFIX}coverage-by-year.png", dpi=110)
    plt.close(fig)
    names.append(f"{PLOT_PREFIX}coverage-by-year.png")

    # 3. PIT: the model's quantile bins (its CDF is known only at its levels) and GARCH's PIT
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    edges = np.r_[0.0, levels, 1.0]
    r = f["returns"]
    bin_index = np.sum(r[:, None] >= q_model, axis=1)  # 0..k: which gap between quantiles
    freq = np.bincount(bin_index, minlength=len(edges) - 1) / r.shape[0]
    widths = np.diff(edges)
    axes[0].bar(edges[:-1], freq / widths, width=widths, align="edge", edgecolor="black")
    axes[0].axhline(1.0, color="black", ls="--", lw=0.8)
    axes[0].set_title("Model: PIT in its quantile bins (ideal: 1)")
    axes[0].set_xlabel("forecast CDF at the realised return")
    axes[1].hist(f["garch_pit"], bins=20, range=(0, 1), density=True, edgecolor="black")
    axes[1].axhline(1.0, color="black", ls="--", lw=0.8)
    axes[1].set_title("GARCH(1,1)-t: PIT histogram (ideal: 1)")
    axes[1].set_xlabel("forecast CDF at the realised return")
    fig.tight_layout()
    fig.savefig(out / f"{PLOT_PREFIX}pit.png", dpi=110)
    plt.close(fig)
    names.append(f"{PLOT_PREFIX}pit.png")

    # 4. the price view: median and interval against the actual price, last 120 days
    last, actual = f["last"], f["actual"]
    span = slice(-120, None)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.fill_between(
        x[span],
        (last * np.exp(q_model[:, lo]))[span],
        (last * np.exp(q_model[:, hi]))[span],
        color="tab:blue",
        alpha=0.2,
        label=f"{report['interval']:.0%} interval",
    )
    ax.plot(x[span], actual[span], color="black", lw=1.2, label="actual")
    ax.plot(
        x[span],
        (last * np.exp(q_model[:, mid]))[span],
        color="tab:blue",
        lw=1.0,
        label="forecast (median)",
    )
    ax.set_title("Next-day forecast vs actual, last 120 test days")
    ax.set_ylabel("price")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / f"{PLOT_PREFIX}forecast.png", dpi=110)
    plt.close(fig)
    names.append(f"{PLOT_PREFIX}forecast.png")
    return names

"""`tickcast evaluate`: an artifact against persistence on the held-out test rows.

Writes report.md, report.json and PNG plots into --out. The test rows are the same as in training:
the last 20 % of the rows of --data (after --limit-rows), predicted from the windows before them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.data import GOLD_CSV, select_rows
from models.scoring import score_split
from models.split import chronological_split


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
        "--out", type=Path, default=Path("reports/evaluation"), help="report folder"
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
    metrics, last, actual, quantiles = score_split(predictor, series.prices, split.test, raw=True)
    dates = series.dates[split.test[0] : split.test[1]]
    report = {
        "artifact": folder.name,
        "version": predictor.version,
        "backend": args.backend,
        "data": Path(args.data).name,
        "test_first": str(dates[0]),
        "test_last": str(dates[-1]),
        **metrics,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plots = write_plots(out, dates, last, actual, quantiles, predictor.interval)
    (out / "report.md").write_text(markdown(report, plots), encoding="utf-8")
    m, p = metrics["model"], metrics["persistence"]
    print(
        f"{predictor.version} on {report['test_first']}..{report['test_last']} (n={metrics['n']}):"
        f" MAE {m['mae']:.3f} vs persistence {p['mae']:.3f}, MASE {m['mase']:.4f},"
        f" coverage {metrics['interval']['coverage']:.3f}; report in {out}/report.md"
    )
    return 0


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    m, p = report["model"], report["persistence"]
    iv, d = report["interval"], report["direction"]
    lines = [
        f"# Evaluation of model {report['version']}",
        "",
        f"Test rows: {report['test_first']} to {report['test_last']}, n = {report['n']}"
        f" next-day targets, each predicted from the 60 prices before it ({report['backend']}"
        f" backend, data {Path(report['data']).name}).",
        "",
        "| forecast | MAE | RMSE | MAPE | MASE |",
        "|---|---|---|---|---|",
        f"| CNN-Bi-LSTM (median) | {m['mae']:.3f} | {m['rmse']:.3f} | {m['mape_pct']:.3f} %"
        f" | {m['mase']:.4f} |",
        f"| persistence (tomorrow = today) | {p['mae']:.3f} | {p['rmse']:.3f} |"
        f" {p['mape_pct']:.3f} % | 1.0000 |",
        "",
        f"- {iv['level']:.0%} interval (quantiles 0.1 to 0.9): coverage {iv['coverage']:.3f}"
        f" (target {iv['level']:.2f}), mean width {iv['mean_width']:.2f}.",
        f"- Directional accuracy: {d['accuracy']:.4f} ({d['hits']} of {d['trials']} days with a"
        f" move in both price and forecast), p = {d['p_value']:.3g} ({d['test']}).",
        "",
    ]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def write_plots(
    out: Path,
    dates: np.ndarray,
    last: np.ndarray,
    actual: np.ndarray,
    quantiles: np.ndarray,
    interval: float,
) -> list[str]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    point = last * np.exp(quantiles[:, 1])
    lower = last * np.exp(quantiles[:, 0])
    upper = last * np.exp(quantiles[:, -1])
    x = dates.astype("datetime64[D]").astype(object)
    names = []

    span = slice(-120, None)  # the last ~6 months: readable day by day
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.fill_between(
        x[span],
        lower[span],
        upper[span],
        color="tab:blue",
        alpha=0.2,
        label=f"{interval:.0%} interval",
    )
    ax.plot(x[span], actual[span], color="black", lw=1.2, label="actual")
    ax.plot(x[span], point[span], color="tab:blue", lw=1.0, label="forecast (median)")
    ax.set_title("Next-day forecast vs actual, last 120 test days")
    ax.set_ylabel("price")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "forecast.png", dpi=110)
    plt.close(fig)
    names.append("forecast.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    err_model = point - actual
    err_pers = last - actual
    bins = np.linspace(*np.percentile(np.r_[err_model, err_pers], [0.5, 99.5]), 80)
    ax.hist(err_pers, bins=bins, alpha=0.5, label="persistence", color="tab:gray")
    ax.hist(err_model, bins=bins, alpha=0.5, label="model", color="tab:blue")
    ax.set_title("Forecast error (forecast - actual), test rows")
    ax.set_xlabel("error")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "errors.png", dpi=110)
    plt.close(fig)
    names.append("errors.png")

    window = 250  # about one trading year
    if len(actual) > window:
        kernel = np.ones(window)
        mae_model = np.convolve(np.abs(err_model), kernel, "valid")
        mae_pers = np.convolve(np.abs(err_pers), kernel, "valid")
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot(x[window - 1 :], mae_model / mae_pers, color="tab:blue")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_title(f"Rolling MASE over {window} test days (below 1 = better than persistence)")
        ax.set_ylabel("MASE")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(out / "rolling_mase.png", dpi=110)
        plt.close(fig)
        names.append("rolling_mase.png")
    return names

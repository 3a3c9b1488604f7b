"""`tickcast train`: fit the CNN-Bi-LSTM on a price CSV and write a new artifact.

Chronological split (models/split.py): the test targets are the last 20 % of rows and are never
seen by training or model selection; early stopping watches the validation rows only. Seeds are
fixed. The test metrics written into the manifest are computed through the ONNX file that ships,
so they describe exactly what `tickcast run` serves.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from models.data import GOLD_CSV, select_rows

log = logging.getLogger(__name__)

DEFAULTS = {
    "epochs": 60,
    "patience": 8,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "seed": 7,
    "conv_filters": 24,
    "lstm_units": 16,
}


def configure(parser: argparse.ArgumentParser) -> None:
    from stream.predictor import shipped_artifacts_dir

    parser.add_argument(
        "--data", type=Path, default=GOLD_CSV, help="CSV of date,price (default: the gold series)"
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="maximum epochs")
    parser.add_argument(
        "--patience", type=int, default=DEFAULTS["patience"], help="early-stopping patience"
    )
    parser.add_argument(
        "--limit-rows",
        type=int,
        default=None,
        metavar="N",
        help="use only the last N rows of the CSV (a quick run); the split applies to those rows",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument(
        "--seeds",
        type=_seeds_arg,
        default=None,
        metavar="S1,S2,..",
        help="train one CNN-Bi-LSTM per seed (default: --seed alone) and keep the --members with"
        " the lowest validation loss",
    )
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="networks in the artifact (default 1); more than one: an ensemble over seeds, their"
        " quantiles averaged inside the one graph (serving cost grows about linearly)",
    )
    parser.add_argument("--conv-filters", type=int, default=DEFAULTS["conv_filters"])
    parser.add_argument("--lstm-units", type=int, default=DEFAULTS["lstm_units"])
    parser.add_argument("--window", type=int, default=60, help="prices per window (default 60)")
    parser.add_argument(
        "--quantiles",
        type=_quantiles_arg,
        default=None,
        metavar="Q1,Q2,..",
        help="quantile levels, ascending, including 0.1, 0.5 and 0.9 (default 0.1,0.5,0.9); e.g."
        " 0.05,0.1,0.25,0.5,0.75,0.9,0.95 for a fuller distribution. The interval served stays"
        " the 80 %% one (0.1..0.9)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=shipped_artifacts_dir(),
        help="artifacts folder; the model goes to OUT/<version>/ (default: models/artifacts)",
    )
    parser.add_argument(
        "--set-current", action="store_true", help="make the new artifact OUT/CURRENT"
    )
    parser.add_argument(
        "--train-mix",
        type=float,
        default=1.0,
        help="the mix while training (default 1: the CNN-Bi-LSTM is trained alone, the"
        " volatility branch keeps its fixed starting filters)",
    )
    parser.add_argument(
        "--mix",
        type=_mix_arg,
        default="auto",
        help="weight of the CNN-Bi-LSTM's quantiles against the volatility branch's (1 - mix) in"
        " the artifact; auto (default): the value in 0, 0.05, .., 1 with the lowest pinball loss"
        " on the validation rows",
    )
    parser.add_argument(
        "--init-from",
        default="",
        metavar="DIR",
        help="start the CNN-Bi-LSTM layers from this artifact's model.keras (with --epochs 0: keep"
        " them as they are and only fit the mix and the calibration on the validation rows)",
    )
    parser.add_argument(
        "--calibration",
        choices=("symmetric", "cqr", "none"),
        default="symmetric",
        help="symmetric (default): one factor for both gaps so that the validation rows see the"
        " interval's nominal miss rate (conformalised quantile regression on the interval);"
        " cqr: one factor per tail, each tail at its own miss rate; none: leave the gaps",
    )


def _seeds_arg(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ints"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more distinct seeds")
    return seeds


def _quantiles_arg(text: str) -> tuple[float, ...]:
    from models.cnn_bilstm import check_quantiles

    try:
        return check_quantiles([float(part) for part in text.split(",") if part.strip()])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _mix_arg(text: str) -> str:
    """`auto` or a number in [0, 1] (kept as text; run() reads it)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return text


def _progress_callback(epochs: int) -> Any:
    """A rich progress bar over epochs with the latest losses, as a Keras callback."""
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    class RichProgress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("epochs", total=epochs, status="")
            self.best = float("inf")

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            val = float(logs.get("val_loss", float("nan")))
            self.best = min(self.best, val)
            status = (
                f"loss {float(logs.get('loss', float('nan'))):.4f}"
                f"  val_loss {val:.4f}  best {self.best:.4f}"
            )
            self.bar.update(self.task, advance=1, status=status)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.stop()

    return RichProgress()


def run(args: argparse.Namespace) -> int:
    # TF and absl write harmless C++ notices (unknown dataset attributes) to stderr; keep them out.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from models.artifact import set_current, write_artifact, write_manifest
    from models.cnn_bilstm import (
        INTERVAL,
        NETWORK_LAYERS,
        QUANTILES,
        build_model,
        member_suffix,
        pinball_loss,
        set_calibration,
        set_mix,
    )
    from models.evaluate import evaluate, issue_targets, json_safe
    from models.scoring import score_split
    from models.split import chronological_split, relative_log, target_log_returns, windows_for
    from stream.errors import DataError
    from stream.predictor import OnnxPredictor, read_manifest, resolve_artifact

    series = select_rows(args.data, args.limit_rows)
    window = args.window
    try:
        split = chronological_split(len(series), window)
    except ValueError as exc:
        raise DataError(f"{args.data}: {exc}") from None
    prices = series.prices

    def xy(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        x = relative_log(windows_for(prices, *bounds, window)).astype(np.float32)[..., None]
        return x, target_log_returns(prices, *bounds).astype(np.float32)

    x_train, y_train = xy(split.train)
    x_val, y_val = xy(split.validation)
    parts = split.describe(series)
    log.info(
        "split train=%s..%s (%d) validation=%s..%s (%d) test=%s..%s (%d)",
        *(
            parts[p][k]
            for p in ("train", "validation", "test")
            for k in ("first_target", "last_target", "targets")
        ),
    )

    tf.config.experimental.enable_op_determinism()
    fixed_mix = None if args.mix == "auto" else float(args.mix)
    seeds: list[int] = args.seeds or [args.seed]
    if not args.init_from and not 1 <= args.members <= len(seeds):
        raise DataError(f"--members {args.members} needs at least that many --seeds ({seeds})")
    if args.init_from and len(seeds) > 1:
        raise DataError("--init-from starts one model: give one seed, not --seeds")
    quantiles: tuple[float, ...] = args.quantiles or QUANTILES
    loss = pinball_loss(quantiles)
    started = time.perf_counter()

    def train_one(seed: int, members: int) -> tuple[Any, list[float], str | None]:
        keras.utils.set_random_seed(seed)
        model = build_model(
            window,
            conv_filters=args.conv_filters,
            lstm_units=args.lstm_units,
            mix=args.train_mix,
            members=members,
            quantiles=quantiles,
        )
        source = None
        if args.init_from:
            source = init_from_artifact(model, resolve_artifact(args.init_from))
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
        losses: list[float] = []
        if args.epochs > 0:
            stopper = keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=args.patience, restore_best_weights=True
            )
            history = model.fit(
                x_train,
                y_train,
                validation_data=(x_val, y_val),
                epochs=args.epochs,
                batch_size=args.batch_size,
                shuffle=True,
                verbose=0,
                callbacks=[stopper, _progress_callback(args.epochs)],
            )
            losses = [float(v) for v in history.history["val_loss"]]
        return model, losses, source

    initialised_from = None
    if len(seeds) == 1:  # one network (or an --init-from artifact with its own members)
        model, val_losses, initialised_from = train_one(seeds[0], args.members)
        candidates = {seeds[0]: val_losses}
        kept = seeds
    else:
        # Each member is trained alone from its seed (the mix it trains under is --train-mix);
        # the --members with the lowest validation loss are kept: chosen on validation only.
        trained = {seed: train_one(seed, 1) for seed in seeds}
        candidates = {seed: losses for seed, (_, losses, _) in trained.items()}
        kept = sorted(seeds, key=lambda sd: min(candidates[sd], default=float("inf")))
        kept = kept[: args.members]
        model = build_model(
            window,
            conv_filters=args.conv_filters,
            lstm_units=args.lstm_units,
            mix=args.train_mix,
            members=args.members,
            quantiles=quantiles,
        )
        for member, seed in enumerate(kept):
            source = trained[seed][0]
            for name in NETWORK_LAYERS:
                target = model.get_layer(name + member_suffix(member))
                target.set_weights(source.get_layer(name).get_weights())
        val_losses = candidates[kept[0]]
        log.info("members: seeds %s of %s (validation loss)", kept, seeds)
    seconds = time.perf_counter() - started
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else 0

    def val_pinball() -> float:
        q = np.asarray(model.predict(x_val, batch_size=1024, verbose=0))
        return float(np.mean(loss(y_val, q)))

    mix_scores: dict[str, float] = {}
    if fixed_mix is None:
        for mix in np.round(np.linspace(0.0, 1.0, 21), 2):
            set_mix(model, float(mix))
            mix_scores[f"{mix:.2f}"] = val_pinball()
        chosen = min(mix_scores, key=lambda k: mix_scores[k])
        set_mix(model, float(chosen))
        log.info("mix %s: validation pinball %.5f", chosen, mix_scores[chosen])
        mix_used = float(chosen)
    else:
        mix_used = fixed_mix
        set_mix(model, mix_used)

    val_pinball_before = val_pinball()
    calibration: dict[str, Any] = {
        "method": "none",
        "lower": 1.0,
        "upper": 1.0,
        "validation_pinball_pct": val_pinball_before,
    }
    if args.calibration != "none":
        q = np.asarray(model(x_val, training=False), dtype=np.float64)
        if args.calibration == "cqr":
            lower, upper = conformal_factors(q, y_val.astype(np.float64), quantiles, INTERVAL)
            method = (
                "conformalised quantile regression on the validation rows, one multiplicative"
                " factor per tail on the gap between the median and the outer quantile (the"
                " ceil((n + 1)(1 - tau))-th smallest gap ratio), inside the model"
            )
        else:
            lower = upper = symmetric_factor(q, y_val.astype(np.float64), quantiles, INTERVAL)
            method = (
                "conformalised quantile regression on the validation rows, one multiplicative"
                " factor for both gaps (the ceil((n + 1) * level)-th smallest of the larger gap"
                " ratio), inside the model: a factor per tail would carry the validation years'"
                " drift into the tails"
            )
        if len(quantiles) > len(QUANTILES):
            method += (
                f"; the factors are fitted on the {INTERVAL:.0%} interval's columns and multiply"
                " every step on their side of the median, so every level keeps its distance from"
                " the median relative to the interval's"
            )
        set_calibration(model, lower, upper)
        calibrated = val_pinball()
        calibration = {
            "method": method,
            "rows": "validation",
            "lower": lower,
            "upper": upper,
            "validation_pinball_pct_before": val_pinball_before,
            "validation_pinball_pct_after": calibrated,
        }
        log.info("calibration factors lower %.4f upper %.4f", lower, upper)

    data_sha = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    fields: dict[str, Any] = {
        "window": window,
        "horizon": 1,
        "quantiles": list(quantiles),
        "interval": INTERVAL,
        "architecture": {
            "name": "cnn_bilstm",
            "conv_filters": args.conv_filters,
            "lstm_units": args.lstm_units,
            "parameters": int(model.count_params()),
            "members": len(kept) if not args.init_from else member_count(model),
            "ensemble": "members' medians and gaps averaged inside the graph",
            "volatility_branch": "four non-negative filters over |returns| of the window"
            " (started as 5-, 20-, 59-day means and EWMA 0.94), mixed into sigma; quantiles"
            " median 0 +- 1.2816 sigma"
            + (
                ""
                if quantiles == QUANTILES
                else " (each level: median 0 +- its normal |z| x sigma)"
            ),
            "quantile_head": "median and two softplus gaps; outer quantiles median -/+ gap"
            if quantiles == QUANTILES
            else "median and one softplus step per level on each side, from the median outward;"
            " a level's quantile is the median -/+ the running sum of the steps out to it",
            "mix": mix_used,
            "train_mix": args.train_mix,
            "mix_rule": "output = mix * CNN-Bi-LSTM + (1 - mix) * volatility branch"
            + ("; mix chosen on the validation rows (pinball)" if fixed_mix is None else ""),
            "mix_validation_pinball_pct": mix_scores,
            "initialised_from": initialised_from,
        },
        "data": {
            "file": Path(args.data).name,
            "sha256": data_sha,
            "rows": len(series),
            "first_date": str(series.dates[0]),
            "last_date": str(series.dates[-1]),
            "limit_rows": args.limit_rows,
            "split": parts,
        },
        "training": {
            "loss": "pinball (quantile) loss, mean over quantiles",
            "optimizer": f"Adam(lr={args.learning_rate})",
            "batch_size": args.batch_size,
            "max_epochs": args.epochs,
            "epochs_run": len(val_losses),
            "best_epoch": best_epoch,
            "best_val_loss": min(val_losses) if val_losses else None,
            "early_stopping": f"val_loss, patience {args.patience}, restore best weights",
            "seed": kept[0],
            "seeds_trained": seeds,
            "member_seeds": kept,
            "member_rule": "each member trained alone from its seed; the members with the lowest"
            " validation loss are kept",
            "best_val_loss_by_seed": {
                str(seed): (min(losses) if losses else None) for seed, losses in candidates.items()
            },
            "seconds": round(seconds, 1),
        },
        "calibration": calibration,
    }
    folder = write_artifact(model, args.out, fields, window=window)
    manifest = read_manifest(folder)
    predictor = OnnxPredictor(manifest)
    fields_metrics: dict[str, Any] = {
        "validation_metrics": score_split(predictor, prices, split.validation),
        "test_metrics": score_split(predictor, prices, split.test),
    }
    try:  # the baselines need history: a short --limit-rows slice may not have enough
        evaluation, _ = evaluate(predictor, series, split)
    except ValueError as exc:
        log.warning("no baseline evaluation: %s", exc)
    else:
        evaluation["targets"] = issue_targets(evaluation)
        fields_metrics["evaluation"] = json_safe(evaluation)
    write_manifest(folder, {**manifest.raw, **fields_metrics})
    if args.set_current:
        set_current(args.out, manifest.version)

    test = fields_metrics["test_metrics"]
    print(
        f"artifact {folder} (version {manifest.version}); trained {len(val_losses)} epochs"
        f" (best {best_epoch}) in {seconds:.0f} s\n"
        f"test {parts['test']['first_target']}..{parts['test']['last_target']}"
        f" n={test['n']}: MAE {test['model']['mae']:.3f} (persistence"
        f" {test['persistence']['mae']:.3f}), MASE {test['model']['mase']:.4f},"
        f" {INTERVAL:.0%} coverage {test['interval']['coverage']:.3f}"
        + ("; now CURRENT" if args.set_current else "")
    )
    return 0


def init_from_artifact(model: Any, folder: Path) -> str:
    """Copy the CNN-Bi-LSTM layers' weights (every member's) from folder/model.keras, checked
    against its manifest's sha256; the source must have as many members. Returns its version."""
    import keras

    from models.cnn_bilstm import NETWORK_LAYERS, member_suffix
    from stream.errors import ModelError
    from stream.predictor import KERAS_FILE, verify_artifact

    manifest = verify_artifact(
        folder, window_size=model.input_shape[1], horizon=1, files=(KERAS_FILE,)
    )
    source = keras.saving.load_model(str(folder / KERAS_FILE), compile=False)
    mine, theirs = member_count(model), member_count(source)
    if mine != theirs:
        raise ModelError(f"--init-from {folder} has {theirs} member(s), the new model {mine}")
    for member in range(mine):
        for name in NETWORK_LAYERS:
            layer = name + member_suffix(member)
            model.get_layer(layer).set_weights(source.get_layer(layer).get_weights())
    return manifest.version


def member_count(model: Any) -> int:
    """How many CNN-Bi-LSTMs a model holds (layers conv1, conv1_m1, ..)."""
    from models.cnn_bilstm import member_suffix

    names = {layer.name for layer in model.layers}
    count = 0
    while "conv1" + member_suffix(count) in names:
        count += 1
    return count


def symmetric_factor(
    q: Any, y: Any, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), interval: float = 0.8
) -> float:
    """One factor c for both gaps so that [median - c * lower gap, median + c * upper gap] misses
    a share 1 - level of calibration rows (level: the central `interval`, 0.1 to 0.9; its columns
    are found by level, so a model with more quantiles is calibrated on the same interval).

    The score of a row is the larger of its two gap ratios, (median - y) / lower_gap and
    (y - median) / upper_gap; c is its ceil((n + 1) * level)-th smallest value (split-conformal
    on the interval, Romano et al. 2019, multiplicative). Which tail the misses fall in is left
    to the model's own gaps.
    """
    import numpy as np

    from stream.predictor import quantile_columns

    lo, mid, hi = quantile_columns(quantiles, interval)
    median = q[:, mid]
    lower_gap = np.maximum(median - q[:, lo], 1e-12)
    upper_gap = np.maximum(q[:, hi] - median, 1e-12)
    scores = np.maximum((median - y) / lower_gap, (y - median) / upper_gap)
    n = y.shape[0]
    k = min(n, int(np.ceil((n + 1) * (quantiles[hi] - quantiles[lo]))))
    return float(np.sort(scores)[k - 1])


def conformal_factors(
    q: Any, y: Any, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9), interval: float = 0.8
) -> tuple[float, float]:
    """Per-tail factors c so that median - c * gap misses a share tau of calibration rows.

    The gaps are those of the central `interval`'s columns (0.1 and 0.9, found by level): a model
    with more quantiles is calibrated on the same interval, and train applies each factor to
    every step on its side of the median, so the other levels keep their distances relative to
    the interval's.

    q: (n, k) log-return quantiles, y: (n,) realised log returns. The score of a row is how many
    of its gaps the outcome lies beyond the median, (median - y) / lower_gap for the lower tail;
    the factor is its ceil((n + 1)(1 - tau))-th smallest value (split-conformal, Romano et al.
    2019, in the multiplicative form that keeps the interval proportional to the model's width).
    """
    import numpy as np

    from stream.predictor import quantile_columns

    lo, mid, hi = quantile_columns(quantiles, interval)
    median = q[:, mid]
    lower_gap = np.maximum(median - q[:, lo], 1e-12)
    upper_gap = np.maximum(q[:, hi] - median, 1e-12)
    n = y.shape[0]

    def factor(scores: Any, tau: float) -> float:
        k = min(n, int(np.ceil((n + 1) * (1.0 - tau))))
        return float(np.sort(scores)[k - 1])

    return (
        factor((median - y) / lower_gap, quantiles[lo]),
        factor((y - median) / upper_gap, 1.0 - quantiles[hi]),
    )

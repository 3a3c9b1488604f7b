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
    parser.add_argument("--conv-filters", type=int, default=DEFAULTS["conv_filters"])
    parser.add_argument("--lstm-units", type=int, default=DEFAULTS["lstm_units"])
    parser.add_argument("--window", type=int, default=60, help="prices per window (default 60)")
    parser.add_argument(
        "--out",
        type=Path,
        default=shipped_artifacts_dir(),
        help="artifacts folder; the model goes to OUT/<version>/ (default: models/artifacts)",
    )
    parser.add_argument(
        "--set-current", action="store_true", help="make the new artifact OUT/CURRENT"
    )


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
    from models.cnn_bilstm import INTERVAL, QUANTILES, build_model, pinball_loss
    from models.scoring import score_split
    from models.split import chronological_split, relative_log, target_log_returns, windows_for
    from stream.errors import DataError
    from stream.predictor import OnnxPredictor, read_manifest

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

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(window, conv_filters=args.conv_filters, lstm_units=args.lstm_units)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=pinball_loss(QUANTILES))
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=args.patience, restore_best_weights=True
    )
    started = time.perf_counter()
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
    seconds = time.perf_counter() - started
    val_losses = [float(v) for v in history.history["val_loss"]]
    best_epoch = int(np.argmin(val_losses)) + 1

    data_sha = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    fields: dict[str, Any] = {
        "window": window,
        "horizon": 1,
        "quantiles": list(QUANTILES),
        "interval": INTERVAL,
        "architecture": {
            "name": "cnn_bilstm",
            "conv_filters": args.conv_filters,
            "lstm_units": args.lstm_units,
            "parameters": int(model.count_params()),
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
            "best_val_loss": min(val_losses),
            "early_stopping": f"val_loss, patience {args.patience}, restore best weights",
            "seed": args.seed,
            "seconds": round(seconds, 1),
        },
    }
    folder = write_artifact(model, args.out, fields, window=window)
    manifest = read_manifest(folder)
    predictor = OnnxPredictor(manifest)
    fields_metrics = {
        "validation_metrics": score_split(predictor, prices, split.validation),
        "test_metrics": score_split(predictor, prices, split.test),
    }
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

"""`tickcast export`: re-export an artifact's Keras model to ONNX and rewrite its manifest.

For a new tf2onnx or opset, or an artifact whose ONNX file was lost. The version is the hash of the
ONNX file, written in a canonical form, so re-exporting the same weights with the same converter
gives the same version and rewrites the folder in place. A changed export is a new version: it goes
to a new folder next to the old one (which stays, so nothing that serves it breaks), and CURRENT
moves only with --set-current.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact",
        default="",
        metavar="DIR",
        help="artifact folder (default: the one models/artifacts/CURRENT names)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="artifacts folder for the result (default: the artifact's parent folder)",
    )
    parser.add_argument(
        "--set-current", action="store_true", help="make the exported artifact OUT/CURRENT"
    )


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from models.artifact import set_current, write_artifact, write_manifest
    from stream.errors import ModelError
    from stream.predictor import (
        KERAS_FILE,
        OnnxPredictor,
        read_manifest,
        resolve_artifact,
        sha256_file,
    )

    source = resolve_artifact(args.artifact)
    old = read_manifest(source)
    keras_path = source / KERAS_FILE
    expected = old.files.get(KERAS_FILE)
    if not keras_path.is_file():
        raise ModelError(f"cannot export: {keras_path} does not exist")
    actual = sha256_file(keras_path)
    if expected != actual:
        raise ModelError(
            f"cannot export {source}: sha256 of {KERAS_FILE} is {actual},"
            f" but the manifest says {expected}"
        )
    try:
        model = keras.saving.load_model(str(keras_path), compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt file
        raise ModelError(f"cannot load {keras_path}: {exc}") from None

    root: Path = args.out if args.out is not None else source.parent
    carried = {
        k: v
        for k, v in old.raw.items()
        if k not in {"version", "input_transform", "onnx", "libraries", "files"}
    }
    folder = write_artifact(model, root, carried, window=old.window, keras_source=keras_path)
    manifest = read_manifest(folder)

    # The new ONNX file must compute what the Keras model computes, or it is not the same model.
    rng = np.random.default_rng(0)
    windows = np.exp(np.cumsum(rng.normal(0.0, 0.01, (256, old.window)), axis=1)) * 100.0
    onnx_out = OnnxPredictor(manifest).predict_batch(windows)
    rel = np.log(windows / windows[:, -1:]).astype(np.float32)[..., None]
    keras_out = np.asarray(model(rel, training=False), dtype=np.float64)
    diff = float(np.max(np.abs(onnx_out - keras_out)))
    if diff > 1e-5:
        raise ModelError(f"exported ONNX differs from the Keras model by {diff:.3g} (> 1e-5)")
    extra: dict[str, object] = {"export_check_max_abs_diff": diff}
    if manifest.version != old.version:
        extra["exported_from"] = old.version
    write_manifest(folder, {**manifest.raw, **extra})

    if args.set_current:
        set_current(root, manifest.version)
    same = "same version" if manifest.version == old.version else f"new version (was {old.version})"
    print(f"exported {folder} ({same}); ONNX vs Keras max abs diff {diff:.2g}")
    return 0

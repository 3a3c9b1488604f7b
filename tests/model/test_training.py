"""A short training run end to end: train -> artifact -> evaluate -> export, on 1,500 rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.config import ModelSettings
from stream.predictor import ONNX_FILE, load_predictor, version_of

pytest.importorskip("tensorflow")

pytestmark = pytest.mark.train


def only_artifact(root: Path) -> Path:
    folders = [p for p in root.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_train_evaluate_export_on_a_slice(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    args = ["train", "--limit-rows", "1500", "--epochs", "2", "--out", str(root), "--set-current"]
    assert main(args) == 0

    folder = only_artifact(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (root / "CURRENT").read_text().strip() == folder.name == manifest["version"]
    assert manifest["version"] == version_of(folder / ONNX_FILE)
    assert manifest["window"] == 60 and manifest["quantiles"] == [0.1, 0.5, 0.9]
    assert manifest["data"]["rows"] == 1500 and manifest["data"]["last_date"] == "2023-05-09"
    assert manifest["data"]["split"]["test"]["targets"] == 300
    assert manifest["training"]["epochs_run"] == 2
    assert manifest["test_metrics"]["n"] == 300
    # calibrated on the validation rows, and evaluated against the baselines into the manifest
    assert manifest["calibration"]["rows"] == "validation"
    assert manifest["calibration"]["lower"] > 0 and manifest["calibration"]["upper"] > 0
    assert manifest["evaluation"]["test"]["n"] == 300
    assert manifest["evaluation"]["validation"]["n"] == 150
    assert len(manifest["evaluation"]["targets"]) == 6
    # the served graph uses the native ONNX LSTM op, not a Loop/Scan unrolling
    assert "LSTM" in manifest["onnx"]["ops"]
    assert "Loop" not in manifest["onnx"]["ops"] and "Scan" not in manifest["onnx"]["ops"]

    report = tmp_path / "report"
    evaluate = ["evaluate", "--artifact", str(folder), "--limit-rows", "1500", "--out", str(report)]
    assert main(evaluate) == 0
    result = json.loads((report / "model-evaluation.json").read_text())
    assert result["test"]["n"] == 300 and result["version"] == manifest["version"]
    # evaluate and train score the same rows with the same file: the same numbers
    model = result["test"]["forecasters"]["model"]
    assert model["point"]["mae"] == pytest.approx(manifest["test_metrics"]["model"]["mae"])
    assert set(result["test"]["dm"]) == {
        "garch_t",
        "ewma",
        "rolling_250",
        "rolling_60",
        "static",
        "persistence",
    }
    for name in (
        "model-evaluation.md",
        "model-intervals.png",
        "model-coverage-by-year.png",
        "model-pit.png",
        "model-forecast.png",
    ):
        assert (report / name).stat().st_size > 0, name

    # re-export into a fresh folder; export itself fails if ONNX and Keras disagree by > 1e-5
    exported_root = tmp_path / "exported"
    assert main(["export", "--artifact", str(folder), "--out", str(exported_root)]) == 0
    exported = only_artifact(exported_root)
    again = json.loads((exported / "manifest.json").read_text())
    # the ONNX file is written in canonical form: same weights, same bytes, same version
    assert again["version"] == manifest["version"]
    assert again["test_metrics"] == manifest["test_metrics"]
    assert again["export_check_max_abs_diff"] <= 1e-5

    rng = np.random.default_rng(3)
    windows = 1500 * np.exp(np.cumsum(rng.normal(0, 0.01, (200, 60)), axis=1))
    onnx = load_predictor(ModelSettings(path=str(exported)), window_size=60)
    tf = load_predictor(ModelSettings(path=str(exported), backend="tensorflow"), window_size=60)
    assert np.max(np.abs(onnx.predict_batch(windows) - tf.predict_batch(windows))) <= 1e-5


def test_train_an_ensemble_over_seeds_keeps_the_best_members(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    args = ["train", "--limit-rows", "1500", "--epochs", "2", "--out", str(root)]
    assert main([*args, "--seeds", "3,4,5", "--members", "2", "--calibration", "cqr"]) == 0
    folder = only_artifact(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    training = manifest["training"]
    assert training["seeds_trained"] == [3, 4, 5]
    losses = {int(k): v for k, v in training["best_val_loss_by_seed"].items()}
    # the two members are the seeds with the lowest validation loss, best first
    assert training["member_seeds"] == sorted(losses, key=lambda s: losses[s])[:2]
    assert manifest["architecture"]["members"] == 2
    assert manifest["calibration"]["lower"] != manifest["calibration"]["upper"]  # per tail
    # two LSTMs in the one served graph, and ONNX computes what TensorFlow computes
    rng = np.random.default_rng(4)
    windows = 1500 * np.exp(np.cumsum(rng.normal(0, 0.01, (100, 60)), axis=1))
    onnx = load_predictor(ModelSettings(path=str(folder)), window_size=60)
    tf = load_predictor(ModelSettings(path=str(folder), backend="tensorflow"), window_size=60)
    assert np.max(np.abs(onnx.predict_batch(windows) - tf.predict_batch(windows))) <= 1e-5


def test_train_refuses_more_members_than_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "artifacts"
    args = ["train", "--limit-rows", "1500", "--epochs", "1", "--out", str(root)]
    assert main([*args, "--seeds", "3", "--members", "2"]) != 0
    assert "--members 2 needs at least that many --seeds" in capsys.readouterr().err
    assert not root.exists() or not any(root.iterdir())


def test_train_a_wider_quantile_set(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    wide = "0.05,0.1,0.25,0.5,0.75,0.9,0.95"
    args = ["train", "--limit-rows", "1500", "--epochs", "2", "--out", str(root)]
    assert main([*args, "--quantiles", wide, "--calibration", "cqr"]) == 0
    folder = only_artifact(root)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["quantiles"] == [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    assert manifest["interval"] == 0.8
    # the manifest's metrics are those of the 80 % interval (0.1 .. 0.9), not the outer columns
    evaluation = manifest["evaluation"]["test"]["forecasters"]["model"]
    assert manifest["test_metrics"]["interval"]["coverage"] == pytest.approx(
        evaluation["interval"]["coverage"]
    )
    assert (
        evaluation["interval"]["coverage"]
        < evaluation["share_below"]["0.95"] - (evaluation["share_below"]["0.05"])
    )
    assert evaluation["pinball_all"] > 0 and evaluation["pinball"] > 0
    assert manifest["evaluation"]["pinball_levels"] == [0.1, 0.5, 0.9]
    rng = np.random.default_rng(5)
    windows = 1500 * np.exp(np.cumsum(rng.normal(0, 0.01, (100, 60)), axis=1))
    onnx = load_predictor(ModelSettings(path=str(folder)), window_size=60)
    tf = load_predictor(ModelSettings(path=str(folder), backend="tensorflow"), window_size=60)
    out = onnx.predict_batch(windows)
    assert out.shape == (100, 7) and np.all(np.diff(out, axis=1) >= 0)
    assert np.max(np.abs(out - tf.predict_batch(windows))) <= 1e-5


def test_train_refuses_a_quantile_set_without_the_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "artifacts"
    args = ["train", "--limit-rows", "1500", "--epochs", "1", "--out", str(root)]
    with pytest.raises(SystemExit):
        main([*args, "--quantiles", "0.05,0.5,0.95"])
    assert "must include 0.1, 0.5 and 0.9" in capsys.readouterr().err
    assert not root.exists()

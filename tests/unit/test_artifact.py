"""Artifact checks: a wrong manifest, a missing artifact or a tampered file is one ModelError."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream.cli import main
from stream.config import ModelSettings
from stream.errors import ModelError
from stream.predictor import (
    MANIFEST,
    ONNX_FILE,
    load_predictor,
    resolve_artifact,
    shipped_artifacts_dir,
)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A private copy of the shipped artifact, safe to tamper with."""
    copy = tmp_path / "artifact"
    shutil.copytree(resolve_artifact(""), copy)
    return copy


def edit_manifest(folder: Path, **changes: object) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_shipped_artifact_loads_and_predicts_sorted_quantiles() -> None:
    predictor = load_predictor(ModelSettings(), window_size=60)
    assert (shipped_artifacts_dir() / "CURRENT").read_text().strip() == predictor.version
    assert predictor.window == 60 and predictor.horizon == 1
    assert predictor.quantiles == (0.1, 0.5, 0.9) and predictor.interval == 0.8
    rng = np.random.default_rng(1)
    windows = 1800.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (64, 60)), axis=1))
    out = predictor.predict_batch(windows)
    assert out.shape == (64, 3) and out.dtype == np.float64
    assert np.all(np.diff(out, axis=1) > 0)
    # next-day gold moves are about 1 %: a median beyond 5 % would be a broken model
    assert np.all(np.abs(out[:, 1]) < 0.05)


def test_empty_batch_gives_empty_result() -> None:
    predictor = load_predictor(ModelSettings(), window_size=60)
    assert predictor.predict_batch(np.zeros((0, 60))).shape == (0, 3)


def test_wrong_window_width_is_rejected() -> None:
    predictor = load_predictor(ModelSettings(), window_size=60)
    with pytest.raises(ModelError, match=r"shape \(n, 60\), got \(2, 59\)"):
        predictor.predict_batch(np.ones((2, 59)))


def test_window_size_mismatch_names_both_values(artifact: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("windows of 60 prices, but window.size is 30")):
        load_predictor(ModelSettings(path=str(artifact)), window_size=30)


def test_horizon_mismatch_names_both_values(artifact: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("forecasts horizon 1, but model.horizon is 3")):
        load_predictor(ModelSettings(path=str(artifact), horizon=3), window_size=60)


def test_missing_artifact_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match=re.escape(f"no model artifact at {missing}")):
        load_predictor(ModelSettings(path=str(missing)), window_size=60)


def test_missing_current_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stream.predictor.shipped_artifacts_dir", lambda: tmp_path)
    with pytest.raises(ModelError, match=re.escape(f"{tmp_path / 'CURRENT'} does not exist")):
        resolve_artifact("")


def test_tampered_onnx_file_is_a_hash_mismatch(artifact: Path) -> None:
    onnx = artifact / ONNX_FILE
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    expected = json.loads((artifact / MANIFEST).read_text())["files"][ONNX_FILE]
    with pytest.raises(
        ModelError,
        match=f"sha256 of model.onnx is [0-9a-f]{{64}}, but the manifest says {expected}",
    ):
        load_predictor(ModelSettings(path=str(artifact)), window_size=60)


def test_manifest_version_must_match_the_onnx_hash(artifact: Path) -> None:
    real = json.loads((artifact / MANIFEST).read_text())["version"]
    edit_manifest(artifact, version="0123456789ab")
    with pytest.raises(
        ModelError, match=f"version in manifest is 0123456789ab, but model.onnx hashes to {real}"
    ):
        load_predictor(ModelSettings(path=str(artifact)), window_size=60)


def test_a_manifest_whose_interval_the_model_cannot_serve_is_refused_at_load(
    artifact: Path,
) -> None:
    # quantiles 0.1 / 0.5 / 0.9 hold no 90 % interval: refused when loaded (start, reload,
    # promote), not at the first batch (the version is the ONNX file's hash, so it stays valid).
    edit_manifest(artifact, interval=0.9)
    with pytest.raises(ModelError, match=r"no 0\.05 quantile"):
        load_predictor(ModelSettings(path=str(artifact)), window_size=60)


def test_tensorflow_backend_checks_the_keras_file_too(artifact: Path) -> None:
    (artifact / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=re.escape("sha256 of model.keras is")):
        load_predictor(ModelSettings(path=str(artifact), backend="tensorflow"), window_size=60)


def test_predictor_checks_it_returns_one_row_per_window(artifact: Path) -> None:
    predictor = load_predictor(ModelSettings(path=str(artifact)), window_size=60)
    real_run = predictor._run  # type: ignore[attr-defined]
    predictor._run = lambda x: real_run(x)[:-1]  # type: ignore[attr-defined]
    with pytest.raises(ModelError, match=r"returned shape \(7, 3\) for a call of 8 windows"):
        predictor.predict_batch(np.full((4, 60), 100.0))


def test_cli_reports_a_missing_artifact_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--artifact", str(tmp_path / "gone"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == ModelError.exit_code
    assert f"no model artifact at {tmp_path / 'gone'}" in err
    assert "Traceback" not in err

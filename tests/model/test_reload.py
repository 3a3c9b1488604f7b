"""Hot reload: a changed CURRENT (or a signal) swaps in a verified, warmed-up model; a bad one
is refused and the running model keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from stream.config import ModelSettings
from stream.predictor import Predictor, load_predictor
from stream.reload import ModelReloader
from tests.artifacts import artifacts_root, derived_artifact


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_current_change_swaps_in_the_new_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, v1 = artifacts_root(tmp_path)
    v2 = derived_artifact(root, v1)
    settings = ModelSettings(path=str(root))
    current = load_predictor(settings, 60)
    assert current.version == v1 != v2
    swapped: list[Predictor] = []
    clock = Clock()
    reloader = ModelReloader(settings, 60, current, swapped.append, check_every_s=5, clock=clock)

    clock.now = 10
    reloader.between_batches()
    assert swapped == []  # nothing changed

    (root / "CURRENT").write_text(v2)
    clock.now = 12
    reloader.between_batches()
    assert swapped == []  # not yet time to look
    clock.now = 16
    reloader.between_batches()
    assert [p.version for p in swapped] == [v2]
    windows = np.linspace(1900, 1950, 60)[None, :]
    assert not np.allclose(swapped[0].predict_batch(windows), current.predict_batch(windows))

    # A tampered artifact is refused, logged, and not retried while it stays the same.
    v3 = derived_artifact(root, v1, scale=0.9)
    (root / v3 / "model.onnx").write_bytes(b"not a model")
    (root / "CURRENT").write_text(v3)
    with caplog.at_level(logging.ERROR, logger="stream.reload"):
        clock.now = 30
        reloader.between_batches()
        clock.now = 40
        reloader.between_batches()
    assert [p.version for p in swapped] == [v2]
    assert len([r for r in caplog.records if "reload failed" in r.message]) == 1
    assert v2 in caplog.records[0].message  # names the model still serving


def test_a_signal_reloads_at_once(tmp_path: Path) -> None:
    root, v1 = artifacts_root(tmp_path)
    settings = ModelSettings(path=str(root))
    swapped: list[Predictor] = []
    clock = Clock()
    reloader = ModelReloader(
        settings, 60, load_predictor(settings, 60), swapped.append, clock=clock
    )
    v2 = derived_artifact(root, v1)
    (root / "CURRENT").write_text(v2)
    reloader.request()
    reloader.between_batches()  # no time has passed: the request alone triggers it
    assert [p.version for p in swapped] == [v2]

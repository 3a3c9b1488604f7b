"""The two serving backends are one model: ONNX Runtime (served) against TensorFlow (reference)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models.data import GOLD_CSV, load_prices
from models.split import windows_for
from stream.config import ModelSettings
from stream.predictor import load_predictor

pytest.importorskip("tensorflow")


def real_windows(count: int = 1000, window: int = 60) -> np.ndarray:
    """The last `count` windows of the gold series: test-period prices, 2019-2023."""
    prices = load_prices(GOLD_CSV).prices
    return windows_for(prices, len(prices) - count + 1, len(prices) + 1, window)


def test_onnx_matches_tensorflow_on_1000_real_windows() -> None:
    windows = real_windows()
    assert windows.shape == (1000, 60)
    onnx = load_predictor(ModelSettings(backend="onnx"), window_size=60)
    tf = load_predictor(ModelSettings(backend="tensorflow"), window_size=60)
    assert onnx.version == tf.version
    a = onnx.predict_batch(windows)
    b = tf.predict_batch(windows)
    k = len(onnx.quantiles)  # 3 (0.1, 0.5, 0.9) or a wider set holding them
    assert a.shape == b.shape == (1000, k)
    assert np.max(np.abs(a - b)) <= 1e-5
    # the comparison means something only if the outputs vary across windows
    assert np.ptp(a[:, 0]) > 1e-4
    # a batch split differently gives the same rows (no cross-talk between windows)
    assert np.max(np.abs(onnx.predict_batch(windows[:7]) - a[:7])) <= 1e-6
    assert tf.predict_batch(np.zeros((0, 60))).shape == (0, k)


def test_onnx_serving_path_imports_no_tensorflow() -> None:
    code = (
        "import sys, numpy as np\n"
        "from stream.config import ModelSettings\n"
        "from stream.predictor import load_predictor\n"
        "p = load_predictor(ModelSettings(backend='onnx'), window_size=60)\n"
        "out = p.predict_batch(np.full((2, 60), 1900.0))\n"
        "assert out.shape == (2, len(p.quantiles)), out.shape\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'keras' not in sys.modules, 'keras was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr

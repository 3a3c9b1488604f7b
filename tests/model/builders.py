"""Models and windows the model-design tests share."""

from __future__ import annotations

from typing import Any

import numpy as np


def trained_looking(quantiles: tuple[float, ...] | None = None, seed: int = 0) -> Any:
    """A fresh CNN-Bi-LSTM with every trainable weight moved away from its start, as training
    would (the volatility filters kept non-negative): its outputs exercise every branch."""
    from models.cnn_bilstm import build_model

    m = build_model(60) if quantiles is None else build_model(60, quantiles=quantiles)
    rng = np.random.default_rng(seed)
    for layer in m.layers:
        if layer.trainable and layer.weights:
            layer.set_weights(
                [
                    np.abs(w) + rng.normal(0, 0.3, w.shape).astype(np.float32) ** 2
                    if layer.name in {"vol_spans", "sigma"}
                    else w + rng.normal(0, 0.3, w.shape).astype(np.float32)
                    for w in layer.get_weights()
                ]
            )
    return m


def windows(count: int = 64, vol: float = 0.01, seed: int = 1) -> np.ndarray:
    """Random-walk price paths in log space, fat-tailed steps of about `vol`."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_t(4, (count, 60)) * vol, axis=1)


def relative(w: np.ndarray) -> np.ndarray:
    """The model's input: each window relative to its last value, shape (n, 60, 1)."""
    return (w - w[:, -1:]).astype(np.float32)[..., None]

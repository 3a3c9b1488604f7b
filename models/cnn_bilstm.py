"""The CNN-Bi-LSTM with a volatility branch: a window of 60 prices in, next-step log-return
quantiles out.

Input, shape (batch, window, 1), float32: the window relative to its own last price,
x_i = log(p_i / p_last), so the last element is always 0 and the model never sees a price level.
No fitted scaler: every constant is fixed, written into the manifest, and lives inside the model,
so every backend (Keras, TensorFlow, ONNX) sees the same numbers.

Output, shape (batch, len(QUANTILES)): log-return quantiles of the next price, ascending.
price = last_price * exp(q).

Two forecasters in one graph (issue 12):

- the CNN-Bi-LSTM (window x10 -> Conv1D 24/k5/s2 -> Conv1D 24/k3/s2 -> Bi-LSTM 16 -> Dense 16 ->
  median and two softplus gaps), trained with pinball loss. Its median starts at exactly zero
  (persistence). Its gaps live on the scale the training years taught it, so outside their
  volatility range they flatten toward the training average;
- a volatility branch: returns differenced from the window by a fixed convolution (kernel
  [-1, 1]), |r| through four non-negative filters that start as the mean of the last 5, the last
  20 and all 59 returns and an EWMA(0.94), mixed into sigma (1.25 x mean |r|, the normal's std);
  quantiles 0 +- 1.2816 sigma. Exactly proportional to the window's returns: doubling every
  return doubles its interval, at any volatility.

The output is mix * network + (1 - mix) * volatility branch, quantile by quantile, with mix
chosen on the validation rows; then each tail's gap (median to outer quantile) is multiplied by a
conformal calibration factor from the validation rows (models/train.py). Mix and calibration are
non-trainable multipliers inside the graph, so the ONNX file is the whole forecaster. Outer
quantiles are the median minus / plus a non-negative gap: sorted in every backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Quantiles the model predicts; 0.1 and 0.9 bound the 80 % interval, 0.5 is the point forecast.
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
INTERVAL = 0.8
#: Daily log returns are ~0.01; fixed factors bring inputs and outputs near unit scale.
INPUT_SCALE = 10.0
OUTPUT_SCALE = 0.01
#: softplus(0) * OFFSET_SCALE percent: the network's starting half-width of the interval, near
#: the typical 10 %..90 % half-range of daily gold moves (about 1 %).
OFFSET_SCALE = 1.4
#: sigma is started as 1.25 x mean |r| (the normal's std / mean absolute deviation); the
#: volatility branch's gap is the normal's 10 %..50 % distance, 1.2816 sigma.
GAP_SCALE = 1.2816
VOL_SPANS: tuple[int | str, ...] = (5, 20, "all", "ewma")
EWMA_LAMBDA = 0.94


def vol_kernel(returns: int) -> np.ndarray:
    """Starting weights (returns, 1, len(VOL_SPANS)) of the volatility filters: means of |r| over
    the last 5, the last 20, all returns, and EWMA(0.94) weights; each column sums to 1."""
    k = np.zeros((returns, 1, len(VOL_SPANS)), dtype=np.float32)
    for j, span in enumerate(VOL_SPANS):
        if span == "ewma":
            w = EWMA_LAMBDA ** np.arange(returns)[::-1]
        elif span == "all":
            w = np.ones(returns)
        else:
            w = (np.arange(returns) >= returns - int(span)).astype(np.float64)
        k[:, 0, j] = w / w.sum()
    return k


def build_model(
    window: int = 60,
    *,
    conv_filters: int = 24,
    lstm_units: int = 16,
    mix: float = 0.5,
    members: int = 1,
) -> Any:
    """A fresh, uncompiled functional keras.Model (import of Keras happens here); `members`
    CNN-Bi-LSTMs whose outputs are averaged (1: the single network, layers named as always)."""
    import keras
    from keras import layers

    returns = window - 1
    inp = keras.Input(shape=(window, 1), name="window", dtype="float32")

    # The CNN-Bi-LSTM: the window (x10) through two strided convolutions and a Bi-LSTM. With
    # members > 1, that many such networks (trained apart, from different seeds) side by side,
    # their medians and gaps averaged: an ensemble over seeds in one graph.
    scaled = layers.Rescaling(INPUT_SCALE, name="input_scale")(inp)
    towers = [tower(scaled, member_suffix(k), conv_filters, lstm_units) for k in range(members)]
    if members == 1:
        median, lower_gap, upper_gap = towers[0]
    else:
        median, lower_gap, upper_gap = (
            layers.Average(name=f"{part}_mean")([t[i] for t in towers])
            for i, part in enumerate(("median", "lower_gap", "upper_gap"))
        )
    lower_gap = layers.Rescaling(OFFSET_SCALE, name="lower_gap_scale")(lower_gap)
    upper_gap = layers.Rescaling(OFFSET_SCALE, name="upper_gap_scale")(upper_gap)

    # The volatility branch: |returns| of the window (percent) through four non-negative filters
    # (started as the last 5, last 20, all 59 and EWMA(0.94) means), mixed into sigma.
    pct = layers.Rescaling(100.0, name="percent")(inp)
    r = layers.Conv1D(1, 2, use_bias=False, trainable=False, name="returns")(pct)
    abs_r = layers.Add(name="abs_returns")(
        [
            layers.ReLU(name="up_moves")(r),
            layers.ReLU(name="down_moves")(layers.Rescaling(-1.0, name="negate")(r)),
        ]
    )
    vol = layers.Conv1D(
        len(VOL_SPANS),
        returns,
        use_bias=False,
        kernel_constraint=keras.constraints.NonNeg(),
        name="vol_spans",
    )(abs_r)
    vol = layers.Flatten(name="vol")(vol)
    sigma = layers.Dense(
        1, use_bias=False, kernel_constraint=keras.constraints.NonNeg(), name="sigma"
    )(vol)
    vol_gap = layers.Rescaling(GAP_SCALE, name="vol_gap")(sigma)

    # The combination: mix * network + (1 - mix) * volatility branch (whose median is 0), then
    # the conformal calibration factors; all fixed multipliers, not trained.
    def fixed(name: str) -> Any:
        return layers.Dense(1, use_bias=False, trainable=False, name=name)

    median = fixed("median_mix")(median)
    lower_gap = fixed("lower_mix")(layers.Concatenate(name="lower_parts")([lower_gap, vol_gap]))
    upper_gap = fixed("upper_mix")(layers.Concatenate(name="upper_parts")([upper_gap, vol_gap]))
    lower_gap = fixed("lower_calibration")(lower_gap)
    upper_gap = fixed("upper_calibration")(upper_gap)
    lower = layers.Subtract(name="lower")([median, lower_gap])
    upper = layers.Add(name="upper")([median, upper_gap])
    out = layers.Concatenate(name="quantiles_pct")([lower, median, upper])
    out = layers.Rescaling(OUTPUT_SCALE, name="quantiles")(out)
    model = keras.Model(inp, out, name="cnn_bilstm")

    model.get_layer("returns").set_weights([np.array([[[-1.0]], [[1.0]]], dtype=np.float32)])
    model.get_layer("vol_spans").set_weights([vol_kernel(returns)])
    weights = np.full((len(VOL_SPANS), 1), 1.25 / len(VOL_SPANS), dtype=np.float32)
    model.get_layer("sigma").set_weights([weights])
    set_mix(model, mix)
    set_calibration(model, 1.0, 1.0)
    return model


def member_suffix(member: int) -> str:
    """Layer-name suffix of ensemble member `member`: none for the first (the names a single
    network has always had), `_m1`, `_m2`, .. after it."""
    return "" if member == 0 else f"_m{member}"


#: The CNN-Bi-LSTM's own layers, per member (with member_suffix).
NETWORK_LAYERS = ("conv1", "conv2", "bilstm", "dense", "median", "lower_gap", "upper_gap")


def tower(x: Any, suffix: str, conv_filters: int, lstm_units: int) -> tuple[Any, Any, Any]:
    """One CNN-Bi-LSTM on the scaled window: its median and its two softplus gaps (unscaled)."""
    from keras import layers

    x = layers.Conv1D(
        conv_filters, 5, strides=2, padding="same", activation="relu", name=f"conv1{suffix}"
    )(x)
    x = layers.Conv1D(
        conv_filters, 3, strides=2, padding="same", activation="relu", name=f"conv2{suffix}"
    )(x)
    x = layers.Bidirectional(layers.LSTM(lstm_units), name=f"bilstm{suffix}")(x)
    x = layers.Dense(16, activation="relu", name=f"dense{suffix}")(x)
    median = layers.Dense(
        1, kernel_initializer="zeros", bias_initializer="zeros", name=f"median{suffix}"
    )(x)
    lower_gap = layers.Dense(
        1, activation="softplus", kernel_initializer="zeros", name=f"lower_gap{suffix}"
    )(x)
    upper_gap = layers.Dense(
        1, activation="softplus", kernel_initializer="zeros", name=f"upper_gap{suffix}"
    )(x)
    return median, lower_gap, upper_gap


def set_mix(model: Any, mix: float) -> None:
    """Weight of the CNN-Bi-LSTM's quantiles against the volatility branch's (1 - mix)."""
    model.get_layer("median_mix").set_weights([np.array([[mix]], dtype=np.float32)])
    both = np.array([[mix], [1.0 - mix]], dtype=np.float32)
    model.get_layer("lower_mix").set_weights([both])
    model.get_layer("upper_mix").set_weights([both])


def set_calibration(model: Any, lower: float, upper: float) -> None:
    """Multiply the lower / upper gap by these factors (the conformal calibration)."""
    model.get_layer("lower_calibration").set_weights([np.array([[lower]], dtype=np.float32)])
    model.get_layer("upper_calibration").set_weights([np.array([[upper]], dtype=np.float32)])


def pinball_loss(quantiles: tuple[float, ...] = QUANTILES) -> Any:
    """Mean pinball (quantile) loss over the quantile columns, computed in percent units."""
    from keras import ops

    q = ops.convert_to_tensor([list(quantiles)], dtype="float32")

    def pinball(y_true: Any, y_pred: Any) -> Any:
        err = (ops.reshape(y_true, (-1, 1)) - y_pred) / OUTPUT_SCALE
        return ops.mean(ops.maximum(q * err, (q - 1.0) * err), axis=-1)

    return pinball

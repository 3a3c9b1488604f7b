"""The CNN-Bi-LSTM with a volatility branch: a window of 60 prices in, next-step log-return
quantiles out.

Input, shape (batch, window, 1), float32: the window relative to its own last price,
x_i = log(p_i / p_last), so the last element is always 0 and the model never sees a price level.
No fitted scaler: every constant is fixed, written into the manifest, and lives inside the model,
so every backend (Keras, TensorFlow, ONNX) sees the same numbers.

Output, shape (batch, len(QUANTILES)): log-return quantiles of the next price, ascending.
price = last_price * exp(q). `tickcast train --quantiles` builds the same forecaster for a wider
set holding 0.1, 0.5 and 0.9 (build_wide_model: one non-negative step per level on each side).

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

import itertools
from collections.abc import Sequence
from statistics import NormalDist
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


def averaged(towers: list[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    """The towers' (median, lower gap, upper gap), each averaged over the towers: an ensemble
    over seeds in one graph (one tower: its own outputs, no layer added)."""
    from keras import layers

    if len(towers) == 1:
        return towers[0]
    median, lower_gap, upper_gap = (
        layers.Average(name=f"{part}_mean")([t[i] for t in towers])
        for i, part in enumerate(("median", "lower_gap", "upper_gap"))
    )
    return median, lower_gap, upper_gap


def build_model(
    window: int = 60,
    *,
    conv_filters: int = 24,
    lstm_units: int = 16,
    mix: float = 0.5,
    members: int = 1,
    quantiles: tuple[float, ...] = QUANTILES,
) -> Any:
    """A fresh, uncompiled functional keras.Model (import of Keras happens here); `members`
    CNN-Bi-LSTMs whose outputs are averaged (1: the single network, layers named as always).

    `quantiles` other than QUANTILES (e.g. 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95) build the wider
    graph of build_wide_model; the default builds the three-quantile graph, unchanged."""
    quantiles = check_quantiles(quantiles)
    if quantiles != QUANTILES:
        return build_wide_model(
            window,
            conv_filters=conv_filters,
            lstm_units=lstm_units,
            mix=mix,
            members=members,
            quantiles=quantiles,
        )
    import keras
    from keras import layers

    returns = window - 1
    inp = keras.Input(shape=(window, 1), name="window", dtype="float32")

    # The CNN-Bi-LSTM: the window (x10) through two strided convolutions and a Bi-LSTM. With
    # members > 1, that many such networks (trained apart, from different seeds) side by side,
    # their medians and gaps averaged: an ensemble over seeds in one graph.
    scaled = layers.Rescaling(INPUT_SCALE, name="input_scale")(inp)
    towers = [tower(scaled, member_suffix(k), conv_filters, lstm_units) for k in range(members)]
    median, lower_gap, upper_gap = averaged(towers)
    lower_gap = layers.Rescaling(OFFSET_SCALE, name="lower_gap_scale")(lower_gap)
    upper_gap = layers.Rescaling(OFFSET_SCALE, name="upper_gap_scale")(upper_gap)

    sigma = volatility_sigma(inp, returns)
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

    init_volatility_branch(model, returns)
    set_mix(model, mix)
    set_calibration(model, 1.0, 1.0)
    return model


def volatility_sigma(inp: Any, returns: int) -> Any:
    """The volatility branch up to sigma (percent): |returns| of the window through four
    non-negative filters (started as the last 5, last 20, all 59 and EWMA(0.94) means), mixed
    into sigma."""
    import keras
    from keras import layers

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
    return layers.Dense(
        1, use_bias=False, kernel_constraint=keras.constraints.NonNeg(), name="sigma"
    )(vol)


def init_volatility_branch(model: Any, returns: int) -> None:
    """The branch's starting weights: the differencing kernel, the span filters, sigma's mix."""
    model.get_layer("returns").set_weights([np.array([[[-1.0]], [[1.0]]], dtype=np.float32)])
    model.get_layer("vol_spans").set_weights([vol_kernel(returns)])
    weights = np.full((len(VOL_SPANS), 1), 1.25 / len(VOL_SPANS), dtype=np.float32)
    model.get_layer("sigma").set_weights([weights])


def check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    """The levels as a tuple, checked: ascending, inside (0, 1), with the median and the 0.1 and
    0.9 quantiles (the 80 % interval the service serves and issue 12's targets are set on)."""
    # 0.1, 0.5 and 0.9 exactly as QUANTILES spells them, so they are found by value
    qs = tuple(min(QUANTILES, key=lambda n: abs(n - float(q))) for q in quantiles)
    qs = tuple(
        n if abs(n - float(q)) < 1e-9 else float(q) for n, q in zip(qs, quantiles, strict=True)
    )
    if any(not 0.0 < q < 1.0 for q in qs) or any(a >= b for a, b in itertools.pairwise(qs)):
        raise ValueError(f"quantiles {list(qs)} must be ascending and inside (0, 1)")
    missing = [f"{need:g}" for need in QUANTILES if need not in qs]
    if missing:
        raise ValueError(f"quantiles {list(qs)} must include 0.1, 0.5 and 0.9 (no {missing})")
    return qs


def side_levels(quantiles: Sequence[float]) -> tuple[list[float], list[float]]:
    """The levels below and above the median, each ordered from the median outward:
    (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95) -> ([0.25, 0.1, 0.05], [0.75, 0.9, 0.95])."""
    qs = list(quantiles)
    mid = qs.index(0.5)
    return qs[:mid][::-1], qs[mid + 1 :]


def normal_steps(levels: Sequence[float]) -> np.ndarray:
    """|z| increments of the standard normal between successive levels, from the median outward:
    [0.25, 0.1, 0.05] -> [0.6745, 0.6071, 0.3633]; their running sum is each level's |z|."""
    z = np.abs([NormalDist().inv_cdf(q) for q in levels])
    return np.diff(np.r_[0.0, z]).astype(np.float32)


def assembly_matrix(quantiles: Sequence[float]) -> np.ndarray:
    """The fixed linear map [median, lower steps (outward), upper steps (outward)] -> the
    quantiles, ascending: a level's quantile is the median minus (lower) or plus (upper) the sum
    of the steps from the median out to it. Steps are non-negative, so the output is sorted."""
    lows, highs = side_levels(quantiles)
    qs = list(quantiles)
    k_lo, k_hi = len(lows), len(highs)
    a = np.zeros((1 + k_lo + k_hi, len(qs)), dtype=np.float32)
    a[0, :] = 1.0
    for j, level in enumerate(qs):
        if level in lows:
            a[1 : 2 + lows.index(level), j] = -1.0
        elif level in highs:
            a[1 + k_lo : 2 + k_lo + highs.index(level), j] = 1.0
    return a


def build_wide_model(
    window: int,
    *,
    conv_filters: int,
    lstm_units: int,
    mix: float,
    members: int,
    quantiles: tuple[float, ...],
) -> Any:
    """The graph for any quantile set holding 0.1, 0.5 and 0.9 (issue 12's wider set).

    Each side of the median gets one non-negative step per level, from the median outward; a
    level's quantile is the median -/+ the running sum of the steps out to it, so the quantiles
    are sorted in every backend. The CNN-Bi-LSTM's steps are softplus outputs, started at the
    normal's shape (OFFSET_SCALE x the level's |z| step / 1.2816: the 0.1 / 0.9 quantile starts
    where the three-quantile model's does); the volatility branch's steps are sigma x the normal
    |z| steps. Mix and calibration are per side, fixed multipliers on every step of the side."""
    import keras
    from keras import layers

    returns = window - 1
    lows, highs = side_levels(quantiles)
    k_lo, k_hi = len(lows), len(highs)
    inp = keras.Input(shape=(window, 1), name="window", dtype="float32")
    scaled = layers.Rescaling(INPUT_SCALE, name="input_scale")(inp)
    towers = [
        tower(scaled, member_suffix(k), conv_filters, lstm_units, lower=k_lo, upper=k_hi)
        for k in range(members)
    ]
    median, lower_gap, upper_gap = averaged(towers)

    def fixed(units: int, name: str) -> Any:
        return layers.Dense(units, use_bias=False, trainable=False, name=name)

    lower_gap = fixed(k_lo, "lower_gap_scale")(lower_gap)
    upper_gap = fixed(k_hi, "upper_gap_scale")(upper_gap)
    sigma = volatility_sigma(inp, returns)
    lower_vol = fixed(k_lo, "lower_vol_gap")(sigma)
    upper_vol = fixed(k_hi, "upper_vol_gap")(sigma)

    median = fixed(1, "median_mix")(median)
    lower_gap = fixed(k_lo, "lower_mix")(
        layers.Concatenate(name="lower_parts")([lower_gap, lower_vol])
    )
    upper_gap = fixed(k_hi, "upper_mix")(
        layers.Concatenate(name="upper_parts")([upper_gap, upper_vol])
    )
    lower_gap = fixed(k_lo, "lower_calibration")(lower_gap)
    upper_gap = fixed(k_hi, "upper_calibration")(upper_gap)
    parts = layers.Concatenate(name="steps")([median, lower_gap, upper_gap])
    out = fixed(len(quantiles), "quantiles_pct")(parts)
    out = layers.Rescaling(OUTPUT_SCALE, name="quantiles")(out)
    model = keras.Model(inp, out, name="cnn_bilstm")

    init_volatility_branch(model, returns)
    for side, levels in (("lower", lows), ("upper", highs)):
        steps = normal_steps(levels)
        start = np.diag(OFFSET_SCALE * steps / GAP_SCALE).astype(np.float32)
        model.get_layer(f"{side}_gap_scale").set_weights([start])
        model.get_layer(f"{side}_vol_gap").set_weights([steps[None, :]])
    model.get_layer("quantiles_pct").set_weights([assembly_matrix(quantiles)])
    set_mix(model, mix)
    set_calibration(model, 1.0, 1.0)
    return model


def member_suffix(member: int) -> str:
    """Layer-name suffix of ensemble member `member`: none for the first (the names a single
    network has always had), `_m1`, `_m2`, .. after it."""
    return "" if member == 0 else f"_m{member}"


#: The CNN-Bi-LSTM's own layers, per member (with member_suffix).
NETWORK_LAYERS = ("conv1", "conv2", "bilstm", "dense", "median", "lower_gap", "upper_gap")


def tower(
    x: Any, suffix: str, conv_filters: int, lstm_units: int, *, lower: int = 1, upper: int = 1
) -> tuple[Any, Any, Any]:
    """One CNN-Bi-LSTM on the scaled window: its median and its softplus gaps (unscaled), `lower`
    and `upper` of them (one per level on that side of the median)."""
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
        lower, activation="softplus", kernel_initializer="zeros", name=f"lower_gap{suffix}"
    )(x)
    upper_gap = layers.Dense(
        upper, activation="softplus", kernel_initializer="zeros", name=f"upper_gap{suffix}"
    )(x)
    return median, lower_gap, upper_gap


def set_mix(model: Any, mix: float) -> None:
    """Weight of the CNN-Bi-LSTM's quantiles against the volatility branch's (1 - mix)."""
    model.get_layer("median_mix").set_weights([np.array([[mix]], dtype=np.float32)])
    for side in ("lower_mix", "upper_mix"):
        layer = model.get_layer(side)
        k = int(layer.get_weights()[0].shape[1])  # steps on this side (1: the 3-quantile model)
        both = np.vstack([mix * np.eye(k), (1.0 - mix) * np.eye(k)]).astype(np.float32)
        layer.set_weights([both])


def set_calibration(model: Any, lower: float, upper: float) -> None:
    """Multiply the lower / upper gap by these factors (the conformal calibration); with more
    levels, every step of that side (so every quantile's distance from the median)."""
    for side, factor in (("lower_calibration", lower), ("upper_calibration", upper)):
        layer = model.get_layer(side)
        k = int(layer.get_weights()[0].shape[1])
        layer.set_weights([(factor * np.eye(k)).astype(np.float32)])


def pinball_loss(quantiles: tuple[float, ...] = QUANTILES) -> Any:
    """Mean pinball (quantile) loss over the quantile columns, computed in percent units."""
    from keras import ops

    q = ops.convert_to_tensor([list(quantiles)], dtype="float32")

    def pinball(y_true: Any, y_pred: Any) -> Any:
        err = (ops.reshape(y_true, (-1, 1)) - y_pred) / OUTPUT_SCALE
        return ops.mean(ops.maximum(q * err, (q - 1.0) * err), axis=-1)

    return pinball

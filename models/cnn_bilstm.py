"""The CNN-Bi-LSTM: a window of 60 prices in, next-step log-return quantiles out.

Input, shape (batch, window, 1), float32: the window relative to its own last price,
x_i = log(p_i / p_last), so the last element is always 0 and the model never sees a price level.
That makes it scale-free (gold at 35 USD in 1970 and at 2,000 USD in 2023 look alike) and needs no
fitted scaler: the two constants below are fixed, written into the manifest, and live inside the
model as Rescaling layers, so every backend (Keras, TensorFlow, ONNX) sees the same numbers.

Output, shape (batch, len(QUANTILES)): log-return quantiles of the next price, ascending.
price = last_price * exp(q). The median head starts at exactly zero (zero kernel and bias), so an
untrained model is persistence and training learns deviations from it. The outer quantiles are the
median minus / plus a softplus offset, so they are sorted by construction in every backend.

Shape of the network (small on purpose: serving is one batched call per Kafka batch on a CPU):
Conv1D(24, k=5, stride 2) -> Conv1D(24, k=3, stride 2) shortens 60 steps to 15 with local features,
Bidirectional(LSTM(16)) reads the 15 steps both ways, Dense(16) -> the quantile head.
"""

from __future__ import annotations

from typing import Any

#: Quantiles the model predicts; 0.1 and 0.9 bound the 80 % interval, 0.5 is the point forecast.
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
INTERVAL = 0.8
#: Daily log returns are ~0.01; fixed factors bring inputs and outputs near unit scale.
INPUT_SCALE = 10.0
OUTPUT_SCALE = 0.01
#: softplus(0) * OFFSET_SCALE percent: the starting half-width of the interval, near the typical
#: 10 %..90 % half-range of daily gold moves (about 1 %).
OFFSET_SCALE = 1.4


def build_model(window: int = 60, *, conv_filters: int = 24, lstm_units: int = 16) -> Any:
    """A fresh, compiled-free functional keras.Model (import of Keras happens here)."""
    import keras
    from keras import layers

    inp = keras.Input(shape=(window, 1), name="window", dtype="float32")
    x = layers.Rescaling(INPUT_SCALE, name="input_scale")(inp)
    x = layers.Conv1D(conv_filters, 5, strides=2, padding="same", activation="relu", name="conv1")(
        x
    )
    x = layers.Conv1D(conv_filters, 3, strides=2, padding="same", activation="relu", name="conv2")(
        x
    )
    x = layers.Bidirectional(layers.LSTM(lstm_units), name="bilstm")(x)
    x = layers.Dense(16, activation="relu", name="dense")(x)

    # Median in percent; starts at 0 = persistence.
    median = layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros", name="median")(x)
    lower_gap = layers.Dense(
        1, activation="softplus", kernel_initializer="zeros", name="lower_gap"
    )(x)
    upper_gap = layers.Dense(
        1, activation="softplus", kernel_initializer="zeros", name="upper_gap"
    )(x)
    lower_gap = layers.Rescaling(OFFSET_SCALE, name="lower_gap_scale")(lower_gap)
    upper_gap = layers.Rescaling(OFFSET_SCALE, name="upper_gap_scale")(upper_gap)
    lower = layers.Subtract(name="lower")([median, lower_gap])
    upper = layers.Add(name="upper")([median, upper_gap])
    out = layers.Concatenate(name="quantiles_pct")([lower, median, upper])
    out = layers.Rescaling(OUTPUT_SCALE, name="quantiles")(out)
    return keras.Model(inp, out, name="cnn_bilstm")


def pinball_loss(quantiles: tuple[float, ...] = QUANTILES) -> Any:
    """Mean pinball (quantile) loss over the quantile columns, computed in percent units."""
    from keras import ops

    q = ops.convert_to_tensor([list(quantiles)], dtype="float32")

    def pinball(y_true: Any, y_pred: Any) -> Any:
        err = (ops.reshape(y_true, (-1, 1)) - y_pred) / OUTPUT_SCALE
        return ops.mean(ops.maximum(q * err, (q - 1.0) * err), axis=-1)

    return pinball

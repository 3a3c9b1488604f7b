"""The floor of `tickcast bench rivals`: tickcast's job with no framework, no Redis, no commits.

    python -m bench.floor SOURCE_TOPIC TARGET_TOPIC

What it does, per `consume(1000)` batch (confluent-kafka, tickcast's own consumer and producer
settings): decode each tick (one typed msgspec call), append its price to the symbol's window in
a dict of Python lists, and for every window that is full (`window.size` prices) make one
forecast; all the batch's windows go through ONE model call of tickcast's own predictor
(stream.predictor.load_predictor: the CURRENT artifact, ONNX, the same input transform and
batch-invariant padding), are priced as the pipeline prices them
(stream.pipeline.forecast_values), hashed as the pipeline hashes them (stream.cache.digests, the forecast's `window_hash`), encoded
with stream.contracts.encode_forecast with the same headers, and produced to TARGET_TOPIC without
waiting for delivery. So every forecast it publishes has the bytes tickcast would publish for
that window, but for `produced_at`.

What it does not do, and tickcast does: validate a tick beyond its JSON shape (symbol syntax,
positive price, future or late event time, key = symbol), dead-letter bad input, keep the windows
anywhere but this process (a restart loses them, and starts again from the topic's beginning:
it joins no group and commits no offset, it reads every partition by assignment), cache results,
wait for delivery before going on, commit anything, score forecasts, reload the model, expose
metrics or health, shut down with a bound. It is the least CPU any Python service doing this job
spends here: what tickcast costs above it is the price of those guarantees and features.

`Windows` and `Forecaster` are the job itself; bench/rival_bytewax.py runs the very same two
inside a Bytewax dataflow, so the two rivals differ only in their plumbing.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from stream.cache import digests
from stream.contracts import Forecast, Source, encode_forecast, forecast_headers
from stream.pipeline import forecast_values
from stream.predictor import quantile_columns


class TickFields(msgspec.Struct):
    """A tick's JSON shape; unknown fields ignored (the floor does not judge its input)."""

    symbol: str
    price: float
    ts: int


decode_tick = msgspec.json.Decoder(TickFields).decode

#: (symbol, ts, partition, offset, the window's prices oldest first): one full window
Done = tuple[str, int, int, int, list[float]]


class Windows:
    """The last `size` prices per symbol, in this process's memory."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.prices: dict[str, list[float]] = {}

    def add(self, symbol: str, price: float) -> list[float] | None:
        """Append; the full window ending at this price, or None while the symbol warms up."""
        prices = self.prices.get(symbol)
        if prices is None:
            prices = self.prices[symbol] = []
        prices.append(price)
        n = len(prices)
        if n < self.size:
            return None
        if n >= 4 * self.size:  # trimmed now and then, not on every tick
            del prices[: n - self.size]
        return prices[-self.size :]


class Forecaster:
    """Full windows -> (key, value, headers) of their forecast messages, one model call for them
    all; the numbers tickcast's Pipeline computes for a new window, bit for bit."""

    def __init__(self, predictor: Any, source_topic: str) -> None:
        self.predictor = predictor
        self.source_topic = source_topic
        self.columns = quantile_columns(predictor.quantiles, predictor.interval)

    def __call__(self, done: Sequence[Done]) -> list[tuple[bytes, bytes, list[Any]]]:
        if not done:
            return []
        predictor = self.predictor
        matrix = np.array([d[4] for d in done], dtype=np.float64)
        outputs = predictor.predict_batch(matrix)
        hashes = digests(list(matrix), predictor.horizon)
        columns = self.columns
        horizon, interval, version = predictor.horizon, float(predictor.interval), predictor.version
        topic = self.source_topic
        produced_at = int(time.time() * 1000)
        out: list[tuple[bytes, bytes, list[Any]]] = []
        for (symbol, ts, partition, offset, prices), row, digest in zip(
            done, outputs, hashes, strict=True
        ):
            last = prices[-1]
            values = forecast_values(last, row, columns)
            if values is None:
                continue
            price, lower, upper = values
            f = Forecast(
                symbol,
                ts,
                horizon,
                price,
                lower,
                upper,
                interval,
                last,
                version,
                digest,
                False,
                Source(topic, partition, offset),
                produced_at,
            )
            out.append((symbol.encode(), encode_forecast(f), forecast_headers(f)))
        return out


def load(source_topic: str) -> tuple[Any, Forecaster, Windows]:
    """Settings (tickcast's, from the environment and config.toml), the predictor, the job."""
    from stream import config
    from stream.predictor import load_predictor

    settings = config.load(None)
    predictor = load_predictor(settings.model, settings.window.size)
    return settings, Forecaster(predictor, source_topic), Windows(settings.window.size)


def main(source: str, target: str) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    from stream.kafka import consumer_config, producer_config

    settings, forecaster, windows = load(source)
    consumer = Consumer(consumer_config(settings, group_id=f"floor-{uuid.uuid4().hex[:8]}"))
    partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
    consumer.assign([TopicPartition(source, p, OFFSET_BEGINNING) for p in partitions])
    producer = Producer(producer_config(settings))
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    add = windows.add
    produce = producer.produce
    while not stopping:
        done: list[Done] = []
        for m in consumer.consume(1000, timeout=0.1):
            if m.error() is not None:
                continue
            try:
                t = decode_tick(m.value() or b"")
            except msgspec.DecodeError:
                continue
            prices = add(t.symbol, t.price)
            if prices is not None:
                done.append((t.symbol, t.ts, m.partition() or 0, m.offset() or 0, prices))
        for key, value, headers in forecaster(done):
            try:
                produce(target, value, key, headers=headers)
            except BufferError:  # librdkafka's queue is full: serve deliveries, then again
                producer.poll(0.05)
                produce(target, value, key, headers=headers)
        producer.poll(0)
    producer.flush(10)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

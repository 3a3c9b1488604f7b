"""Drive the real `tickcast run` process against the real broker and Redis."""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from models.data import GOLD_CSV, load_prices
from stream.contracts import Forecast
from stream.errors import TickcastError
from tools.feed import ticks
from tools.launch import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
W = 60


@dataclass
class Service(ServiceProcess):
    """The shared launcher (tools/launch.py) as the tests use it: in the repository root, start()
    waits for /readyz and returns the service, a failure to start shows the log's last lines, and
    metrics are summed by name."""

    cwd: Path | None = ROOT

    # Returns the service, so a test reads `svc = setup().start()`.
    def start(  # type: ignore[override]
        self, wait_ready: bool = True, timeout: float = 60.0
    ) -> Service:
        super().start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        try:
            return super().wait_ready(timeout)
        except TickcastError as exc:
            raise AssertionError(f"{exc}:\n{self.tail()}") from None

    def metric(self, name: str) -> float:
        """Sum of every sample whose name (with labels) starts with `name`."""
        return sum(self.metric_samples(name).values())

    def metric_samples(self, name: str) -> dict[str, float]:
        return {k: v for k, v in self.metrics().items() if k.startswith(name)}


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    n = 0
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(0.05)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return n


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout: float = 60.0,
    read_committed: bool = True,
    settle: float = 0.0,
) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Read until `expect` messages arrived (then `settle` more seconds for any extra), or timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is None and len(got) >= expect:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for m in consumer.consume(1000, timeout=0.3):
                if m.error() is None:
                    got.append((m.key(), m.value() or b"", list(m.headers() or [])))
    finally:
        consumer.close()
    return got


def group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """High watermark minus committed offset per partition, from Kafka itself."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        lag = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=10
            )
            lag[tp.partition] = high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        consumer.close()


def gold_feed(symbols: int, rows: int) -> list[tuple[bytes | None, bytes]]:
    series = load_prices(GOLD_CSV).tail(3000)
    return [(m.key, m.value) for m in ticks(series.dates, series.prices, symbols, "XAU", rows)]


def expected_windows(feed: list[tuple[bytes | None, bytes]]) -> dict[tuple[str, int], np.ndarray]:
    """(symbol, ts) -> the 60 prices ending at that tick, from the feed itself."""
    history: dict[str, list[float]] = defaultdict(list)
    out = {}
    for _, value in feed:
        obj = orjson.loads(value)
        prices = history[obj["symbol"]]
        prices.append(float(obj["price"]))
        if len(prices) >= W:
            out[(obj["symbol"], obj["ts"])] = np.array(prices[-W:], dtype=np.float64)
    return out


def assert_matches_predictor(forecasts: list[Forecast], windows, predictor) -> None:  # type: ignore[no-untyped-def]
    keys = [(f.symbol, f.ts) for f in forecasts]
    stack = np.stack([windows[k] for k in keys])
    out = predictor.predict_batch(stack)
    median = list(predictor.quantiles).index(0.5)
    # The service ran these windows in other batch compositions, where ONNX Runtime's float32
    # kernels may differ in the last bit; so compare log-returns to 1e-6 (float32 is ~1e-9 here).
    for f, row, window in zip(forecasts, out, stack, strict=True):
        assert f.model_version == predictor.version
        assert f.last_price == window[-1]
        for value, q in ((f.lower, row[0]), (f.price, row[median]), (f.upper, row[-1])):
            assert abs(math.log(value / f.last_price) - q) <= 1e-6

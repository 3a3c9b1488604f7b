"""Drive the real `tickcast run` process against the real broker and Redis."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from models.data import GOLD_CSV, load_prices
from stream.contracts import Forecast
from stream.feed import ticks

ROOT = Path(__file__).resolve().parents[2]
W = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """One `tickcast run` process with its own metrics port and log file."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> Service:
        env = {**os.environ, **self.env, "TICKCAST_METRICS__PORT": str(self.port)}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "run"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def get(self, path: str, attempts: int = 3) -> tuple[int, str]:
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except ConnectionResetError:
                # A scrape racing a busy service loop can be reset; Prometheus would retry too.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"tickcast run exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"tickcast run not ready in {timeout} s:\n{self.tail()}")

    def metric(self, name: str) -> float:
        """Sum of every sample whose name (with labels) starts with `name`."""
        _, text = self.get("/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def metric_samples(self, name: str) -> dict[str, float]:
        _, text = self.get("/metrics")
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name)
        }

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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

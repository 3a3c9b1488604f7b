"""`tickcast bench rivals` compares like with like: the floor (bench/floor.py) and the Bytewax
dataflow (bench/rival_bytewax.py), run as the benchmark runs them (their own process, the real
broker), publish exactly one forecast per full window, and each carries the numbers tickcast's
own Pipeline (real window store and cache in Redis, the served model) computes for that window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from stream import config
from stream.cache import ForecastCache
from stream.contracts import Forecast, Record, decode_forecast
from stream.pipeline import Pipeline
from stream.predictor import load_predictor
from stream.windows import WindowStore

pytestmark = pytest.mark.integration

SYMBOLS = 3
ROWS = 100  # 300 ticks: 41 full windows of 60 per symbol


def _read_all(bootstrap: str, topic: str, want: int, timeout_s: float) -> list[tuple[int, object]]:
    """Every message of `topic` (partition, message), until `want` are in and no more come for a
    second, or `timeout_s`."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got: list[tuple[int, object]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            got += [(m.partition(), m) for m in batch]
            if batch:
                quiet_since = time.monotonic()
            elif len(got) >= want and time.monotonic() - quiet_since > 1.0:
                break
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize(
    "rival",
    [["bench.floor"], ["bench.rival_bytewax"], ["bench.rival_bytewax", "--connector-sink"]],
    ids=["floor", "bytewax", "bytewax-connector-sink"],
)
def test_a_rival_publishes_tickcasts_forecast_once_per_full_window(
    rival: list[str],
    kafka_bootstrap: str,
    redis_client: redis.Redis,
    key_prefix: str,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    if rival[0] == "bench.rival_bytewax" and sys.version_info >= (3, 13):
        pytest.skip("bytewax 0.21 ships wheels up to CPython 3.12 (the bench extra skips it)")
    from models.data import GOLD_CSV, load_prices
    from tools.feed import ticks

    monkeypatch.setenv("TICKCAST_KAFKA__BOOTSTRAP_SERVERS", kafka_bootstrap)
    settings = config.load(None)
    size = settings.window.size
    source, target = topic_factory("rival-ticks", partitions=3), topic_factory("rival-out", 3)
    series = load_prices(GOLD_CSV)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for m in ticks(series.dates, series.prices, SYMBOLS, "RIV", ROWS):
        producer.produce(source, m.value, m.key)
    assert producer.flush(30) == 0
    expected = SYMBOLS * (ROWS - size + 1)

    # stderr to a file, not a pipe: a pipe nobody reads until the end fills up (librdkafka,
    # ONNX Runtime and bytewax all log there) and blocks the rival mid-run
    err_path = tmp_path / "rival.stderr"
    with err_path.open("wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", rival[0], source, target, *rival[1:]],
            env={**os.environ, "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap},
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
        try:
            published = _read_all(kafka_bootstrap, target, expected, 90)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    err = err_path.read_bytes()
    forecasts = [decode_forecast(m.value()) for _, m in published]  # type: ignore[attr-defined]
    assert len(forecasts) == expected, err.decode(errors="replace")[-2000:]

    # tickcast's own Pipeline on the same messages, where they lie in the topic
    ticks_in = _read_all(kafka_bootstrap, source, SYMBOLS * ROWS, 30)
    records = [
        Record(source, p, m.offset(), m.key(), m.value())  # type: ignore[attr-defined]
        for p, m in ticks_in
    ]
    predictor = load_predictor(settings.model, size)
    pipeline = Pipeline(
        WindowStore(redis_client, key_prefix, size=size, history=300, source_topic=source),
        ForecastCache(redis_client, key_prefix, predictor.version, 1, ttl_seconds=60),
        predictor,
        source_topic=source,
        clock_ms=lambda: 0,
        scoring=False,
    )
    reference: list[Forecast] = []
    for start in range(0, len(records), 64):
        reference += pipeline.process(records[start : start + 64], 65_536).forecasts
    assert len(reference) == expected

    def fields(f: Forecast) -> tuple[object, ...]:
        return (
            f.symbol,
            f.ts,
            f.horizon,
            f.price,
            f.lower,
            f.upper,
            f.interval,
            f.last_price,
            f.model_version,
            f.window_hash,
            f.cached,
            f.source,
        )

    by_window = {(f.symbol, f.ts): fields(f) for f in forecasts}
    assert len(by_window) == expected  # one forecast per window, none twice
    assert by_window == {(f.symbol, f.ts): fields(f) for f in reference}

"""The lag the service reports is the lag Kafka's own tools see, while a backlog grows.

Issue 10: the gauge used the watermarks the fetcher caches, which go stale while its queue is
full; under a growing backlog it showed about half the real lag (99,577 against 195,755).
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from tests.e2e.harness import gold_feed, group_lag

pytestmark = pytest.mark.e2e

RATE = 6_000  # ticks/s produced, well above what one-tick batches process


def _produce_for(bootstrap: str, topic: str, seconds: float, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    feed = gold_feed(symbols=40, rows=3000)
    started, sent = time.monotonic(), 0
    while not stop.is_set() and time.monotonic() - started < seconds:
        key, value = feed[sent % len(feed)]
        # The same ticks again are redeliveries or late to the service: cheap and unending.
        try:
            producer.produce(topic, value=value, key=key)
        except BufferError:
            producer.poll(0.05)
            continue
        sent += 1
        if sent % 500 == 0:
            producer.poll(0)
            ahead = sent / RATE - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(30)


def test_the_lag_gauge_agrees_with_kafka_while_a_backlog_grows(setup, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    # One tick per batch: the service falls behind the producer, so the backlog grows.
    svc = setup(TICKCAST_PROCESSING__MAX_BATCH="1").start()
    stop = threading.Event()
    feeder = threading.Thread(
        target=_produce_for, args=(kafka_bootstrap, setup.topics["ticks"], 30.0, stop)
    )
    feeder.start()
    try:
        comparisons = []
        # The end-offsets thread's first answers after an assignment come from a new admin
        # client (bootstrap, metadata): on a busy machine the gauge read 124 against Kafka's
        # 12,555 at 3 s, and agreed within 5,000 from then on. Compared from the second reading.
        time.sleep(2)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and len(comparisons) < 5:
            time.sleep(3)
            ours = sum(svc.metric_samples("tickcast_consumer_lag{").values())
            kafka = sum(
                group_lag(
                    kafka_bootstrap, setup.group, setup.topics["ticks"], setup.partitions
                ).values()
            )
            if kafka > 5_000:  # a real backlog
                comparisons.append((ours, kafka))
        print(f"lag under a growing backlog (gauge, Kafka): {comparisons}")
        assert len(comparisons) >= 3, f"no backlog built up: {comparisons}"
        for ours, kafka in comparisons:
            # Read a moment apart, refreshed every second by a thread that shares two cores with
            # the broker, Redis, the producer and the service: within 3 s of production (the
            # bug this holds off read about half the real lag: 99,577 against 195,755).
            assert abs(ours - kafka) <= 3 * RATE, comparisons
        ours, kafka = comparisons[-1]
        assert ours >= 0.8 * kafka, comparisons
        seconds = svc.metric_samples("tickcast_consumer_lag_seconds{")
        assert max(seconds.values()) > 1.0  # the oldest unprocessed tick is seconds old
    finally:
        stop.set()
        feeder.join()

"""The Kafka adapter's consumer against a real broker: Records, paused assignments, fair batches."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from stream.config import Settings
from stream.kafka import Partition, Source, consumer_config

pytestmark = pytest.mark.integration

PARTITIONS = 6
PER_PARTITION = 20_000


def _settings(bootstrap: str, group: str) -> Settings:
    return Settings.model_validate({"kafka": {"bootstrap_servers": bootstrap, "group_id": group}})


def _backlog(bootstrap: str, topic: str) -> None:
    """Each partition's ticks written one partition after another, as a backlog builds up when
    producers outpace a stopped consumer."""
    # Small producer batches, as feeds that send ticks as they come make: a fetch returns whole
    # record batches, so their size is the finest grain any consumer can interleave at.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 500})
    for p in range(PARTITIONS):
        for i in range(PER_PARTITION):
            value = b'{"symbol":"S%d","price":%d.5,"ts":%d}' % (p, 100 + i % 7, i)
            while True:
                try:
                    producer.produce(topic, value=value, key=b"S%d" % p, partition=p)
                    break
                except BufferError:
                    producer.poll(0.05)
    assert producer.flush(60) == 0


def _subscribe(source: Source, topic: str) -> list[Partition]:
    assigned: list[Partition] = []
    source.subscribe([topic], on_assign=assigned.extend, paused=True)
    deadline = time.monotonic() + 30
    while not assigned and time.monotonic() < deadline:
        assert source.consume(100, 0.2) == []  # paused: nothing is read before resume
    assert len(assigned) == PARTITIONS
    return assigned


def test_a_backlog_is_consumed_evenly_across_partitions(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique: str
) -> None:
    # Issue 15, item 11: with a backlog the consumer used to drain partitions one after
    # another (4 of 6 had nothing at 30 % of the output).
    topic = topic_factory("fair", partitions=PARTITIONS)
    _backlog(kafka_bootstrap, topic)
    source = Source(consumer_config(_settings(kafka_bootstrap, f"fair-{unique}")))
    try:
        source.resume(_subscribe(source, topic))
        # Past the start (each partition's first offset lookup takes its own round trip), the
        # next 30 % of the backlog.
        total = PARTITIONS * PER_PARTITION
        read, seen = 0, Counter[int]()
        deadline = time.monotonic() + 60
        while read < total * 4 // 10 and time.monotonic() < deadline:
            for record in source.consume(1000, 0.5):
                read += 1
                if read > total // 10:
                    seen[record.partition] += 1
        assert read >= total * 4 // 10
        share = {p: seen[p] / sum(seen.values()) for p in range(PARTITIONS)}
        # Perfectly fair is 1/6 each; every partition gets at least half of that.
        assert min(share.values()) > 0.5 / PARTITIONS, share
    finally:
        source.close()


def test_records_carry_position_key_value_and_broker_timestamp(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique: str
) -> None:
    topic = topic_factory("rec", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    before_ms = time.time() * 1000
    producer.produce(topic, value=b"v", key=b"k", headers=[("h", b"1")])
    producer.flush(10)
    source = Source(consumer_config(_settings(kafka_bootstrap, f"rec-{unique}")))
    try:
        source.resume(_subscribe_one(source, topic))
        records = []
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            records = source.consume(10, 0.5)
        [r] = records
        assert (r.topic, r.partition, r.offset, r.key, r.value) == (topic, 0, 0, b"k", b"v")
        assert r.headers == (("h", b"1"),)
        assert before_ms - 5_000 < r.timestamp < time.time() * 1000 + 5_000
    finally:
        source.close()


def _subscribe_one(source: Source, topic: str) -> list[Partition]:
    assigned: list[Partition] = []
    source.subscribe([topic], on_assign=assigned.extend, paused=True)
    deadline = time.monotonic() + 30
    while not assigned and time.monotonic() < deadline:
        source.consume(10, 0.2)
    return assigned


def test_records_come_at_once_after_a_resume_not_at_the_fetchers_next_wake_up(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique: str
) -> None:
    # Every start and every rebalance of the service lost ~1 s between recovery and its first
    # batch: librdkafka does not wake a broker thread on resume, so a partition resumed while
    # its fetcher idled waited for that thread's next wake-up (up to 1 s). The service's order
    # is reproduced: assigned paused, the fetcher idle, the end offsets read (recovery's last
    # request to the leader: its thread wakes for it and then sleeps), then the resume.
    topic = topic_factory("wake", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(100):
        producer.produce(topic, value=b"%d" % i)
    assert producer.flush(10) == 0
    source = Source(consumer_config(_settings(kafka_bootstrap, f"wake-{unique}")))
    try:
        assigned = _subscribe_one(source, topic)
        assert assigned == [(topic, 0)]
        time.sleep(0.5)  # the partition's offset is looked up, then its fetcher goes idle
        source.high_watermarks(assigned)
        started = time.monotonic()
        source.resume(assigned)
        records = []
        while not records and time.monotonic() - started < 5:
            records = source.consume(100, 0.01)
        waited = time.monotonic() - started
        assert records and records[0].offset == 0
        # A round trip on loopback is milliseconds; the idle fetcher's wake-up came after ~1 s.
        assert waited < 0.5, f"first record {waited:.3f} s after the resume"
    finally:
        source.close()

"""The ground everything stands on: a real broker with groups, committed offsets and transactions."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

pytestmark = pytest.mark.integration


def _consumer(bootstrap: str, group: str, **extra: object) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
    }
    conf.update(extra)
    return Consumer(conf)


def _drain(consumer: Consumer, want: int, timeout_polls: int = 60) -> list[tuple[bytes, bytes]]:
    got: list[tuple[bytes, bytes]] = []
    idle = 0
    while len(got) < want and idle < timeout_polls:
        msgs = consumer.consume(num_messages=500, timeout=0.5)
        if not msgs:
            idle += 1
        for m in msgs:
            if m.error():
                raise KafkaException(m.error())
            got.append((m.key(), m.value()))
    return got


def test_keyed_messages_through_a_group_and_resume_from_commit(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=3)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(30):
        producer.produce(topic, key=f"S{i % 3}".encode(), value=str(i).encode())
    assert producer.flush(30) == 0

    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consumer(kafka_bootstrap, group)
    first.subscribe([topic])
    got = _drain(first, 10)
    # Keys stay in one partition each, so each key's values arrive in produce order.
    for key in {k for k, _ in got}:
        values = [int(v) for k, v in got if k == key]
        assert values == sorted(values)
    first.commit(asynchronous=False)
    committed = {tp.partition: tp.offset for tp in first.committed(first.assignment(), timeout=10)}
    first.close()

    second = _consumer(kafka_bootstrap, group)
    second.subscribe([topic])
    rest = _drain(second, 30 - len(got))
    second.close()
    assert sorted(int(v) for _, v in got + rest) == list(range(30))
    assert sum(max(o, 0) for o in committed.values()) == len(got)


def test_read_committed_sees_committed_transaction_not_aborted_one(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory()
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"kept-1")
    producer.produce(topic, key=b"k", value=b"kept-2")
    producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"aborted")
    producer.flush(30)
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"kept-3")
    producer.commit_transaction(30)

    committed_reader = _consumer(
        kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_committed"}
    )
    committed_reader.subscribe([topic])
    seen = [v for _, v in _drain(committed_reader, 3)]
    committed_reader.close()
    assert seen == [b"kept-1", b"kept-2", b"kept-3"]

    raw_reader = _consumer(
        kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_uncommitted"}
    )
    raw_reader.subscribe([topic])
    raw = [v for _, v in _drain(raw_reader, 4)]
    raw_reader.close()
    assert b"aborted" in raw


def test_offsets_committed_inside_a_transaction(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """Consume-transform-produce: input offsets commit atomically with the output."""
    source, sink = topic_factory(), topic_factory()
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        plain.produce(source, value=str(i).encode())
    plain.flush(30)

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka_bootstrap, group)
    consumer.subscribe([source])
    msgs = []
    while len(msgs) < 5:
        msgs += [m for m in consumer.consume(10, timeout=1.0) if not m.error()]
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for m in msgs:
        producer.produce(sink, value=m.value() + b"!")
    producer.send_offsets_to_transaction(
        [TopicPartition(source, 0, msgs[-1].offset() + 1)], consumer.consumer_group_metadata()
    )
    producer.commit_transaction(30)
    committed = consumer.committed([TopicPartition(source, 0)], timeout=10)
    consumer.close()
    assert committed[0].offset == 5

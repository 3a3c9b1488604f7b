"""librdkafka's send_offsets_to_transaction does not keep its timeout while the group
coordinator is down (confluentinc/librdkafka#5456). On the real broker: the raw call is watched,
and tickcast's Sink.send_offsets must come back within its timeout whatever the raw call does."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.errors import KafkaFailure
from stream.kafka import Sink
from tests.faults.conftest import PrivateKafka, create_topics

pytestmark = pytest.mark.faults


def joined_consumer(bootstrap: str, topic: str) -> Consumer:
    """A group member that has its assignment (its group metadata is what a transaction needs)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"hang-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "no assignment within 60 s"
        consumer.poll(0.2)
    return consumer


def open_transaction(bootstrap: str, topic: str) -> Sink:
    sink = Sink(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"hang-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": 15_000,
            "log_level": 0,
        }
    )
    sink.begin()
    sink.produce(topic, b"k", b"v")
    assert sink.flush(30) == 0, "not delivered"
    return sink


def test_send_offsets_with_the_broker_gone_comes_back_within_its_timeout(
    private_kafka: PrivateKafka,
) -> None:
    topic = f"hang-{uuid.uuid4().hex[:8]}"
    create_topics(private_kafka.bootstrap, {topic: (1, {})})
    consumer = joined_consumer(private_kafka.bootstrap, topic)
    metadata = consumer.consumer_group_metadata()
    sink = open_transaction(private_kafka.bootstrap, topic)
    raw = Producer(
        {
            "bootstrap.servers": private_kafka.bootstrap,
            "transactional.id": f"raw-{uuid.uuid4().hex[:8]}",
            "log_level": 0,
        }
    )
    raw.init_transactions(30)
    raw.begin_transaction()
    raw.produce(topic, value=b"v")
    assert raw.flush(30) == 0

    private_kafka.kill()

    # librdkafka itself, given 2 s: watched, not asserted (a fixed librdkafka may keep it).
    def raw_call() -> None:
        with contextlib.suppress(Exception):
            raw.send_offsets_to_transaction([TopicPartition(topic, 0, 1)], metadata, 2.0)

    raw_thread = threading.Thread(target=raw_call, daemon=True)
    raw_thread.start()

    # tickcast's call, given 2 s, tried as the checkpoint does (a timed-out call is repeated).
    outcomes: list[BaseException | None] = []

    def ours() -> None:
        for _ in range(3):
            try:
                sink.send_offsets({(topic, 0): 1}, metadata, 2.0)
                outcomes.append(None)
            except KafkaFailure as exc:
                outcomes.append(exc)

    worker = threading.Thread(target=ours, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "Sink.send_offsets blocked past its timeout"
    assert all(isinstance(o, KafkaFailure) and o.retriable for o in outcomes), outcomes
    # Whatever librdkafka did, a stop may now go on: the abort is refused at once if the call is
    # still inside librdkafka (the checkpoint replaces the producer then).
    try:
        sink.abort(2.0)
    except KafkaFailure as exc:
        assert exc.fatal or exc.retriable, exc
    raw_thread.join(8)
    print(
        "raw send_offsets_to_transaction(timeout=2 s) with the broker gone: "
        + ("still blocked after 10 s (librdkafka#5456)" if raw_thread.is_alive() else "returned")
    )

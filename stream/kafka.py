"""The Kafka adapter: client construction, the delivery latch, topics, lag. Only this module and the
runner touch confluent_kafka.

The commit rule (stream/runner.py obeys it): a batch's input offsets are committed only after every
forecast and dead letter it produced is acknowledged by the broker, and batches are committed in
order. At-least-once: each batch's DeliveryLatch counts its outstanding messages and keeps the first
error; acknowledged batches' offsets are committed asynchronously (synchronously on revoke and
close). Exactly-once: the offsets are sent to the batch's transaction, then commit_transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.config import Settings
from stream.errors import DeliveryError, UnreachableError

log = logging.getLogger(__name__)


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    conf = settings.kafka.librdkafka_common()
    conf.update(
        {
            "group.id": group_id or settings.kafka.group_id,
            # Offsets are committed by the runner only after a batch's output is delivered.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Never act on ticks from an aborted upstream transaction.
            "isolation.level": "read_committed",
            "session.timeout.ms": settings.kafka.session_timeout_ms,
            "max.poll.interval.ms": 300_000,
            "fetch.wait.max.ms": 10,
            "queued.max.messages.kbytes": 32_768,
            "partition.assignment.strategy": "range",
        }
    )
    return conf


def producer_config(settings: Settings, transactional_id: str | None = None) -> dict[str, Any]:
    conf = settings.kafka.librdkafka_common()
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
        }
    )
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
        # An instance killed mid-transaction holds back read_committed readers until this expires
        # (or until it restarts with the same transactional.id, which aborts it at once).
        conf["transaction.timeout.ms"] = 15_000
    return conf


class DeliveryLatch:
    """Counts outstanding produces and keeps the first delivery error for the main thread.

    librdkafka calls `on_delivery` from `poll`/`flush` on the caller's thread; the lock is for the
    metrics thread reading `pending`, not for librdkafka.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0
        self.error: KafkaError | None = None

    def sent(self, n: int = 1) -> None:
        with self._lock:
            self.pending += n

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self.pending -= 1
            if err is not None and self.error is None:
                self.error = err

    def reset(self) -> None:
        """Forget a latched error once the batch that caused it has been rewound."""
        with self._lock:
            self.error = None

    def raise_if_failed(self) -> None:
        with self._lock:
            err, self.error = self.error, None
        if err is not None:
            raise DeliveryError(f"delivery failed: {err.name()} ({err.str()})")


def produce(
    producer: Producer,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Produce one message, waiting for room when librdkafka's local queue is full."""
    # The client's stubs want a list of (str, str | bytes | None); ours holds bytes only.
    wire_headers = cast("list[tuple[str, str | bytes | None]] | None", headers)
    while True:
        try:
            if on_delivery is None:
                producer.produce(topic, value=value, key=key, headers=wire_headers)
            else:
                producer.produce(
                    topic, value=value, key=key, headers=wire_headers, on_delivery=on_delivery
                )
            return
        except BufferError:
            # Serving delivery reports is what frees the queue.
            producer.poll(0.05)


def check_reachable(settings: Settings, timeout: float = 10.0) -> None:
    """Fail at start, naming the address, when no broker answers."""
    admin = AdminClient({**settings.kafka.librdkafka_common(), "socket.timeout.ms": 3000})
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise UnreachableError(
            f"cannot reach Kafka at {settings.kafka.bootstrap_servers} "
            f"(kafka.bootstrap_servers): {exc.args[0].str() if exc.args else exc}"
        ) from None


def ensure_topics(
    settings: Settings, names: Iterable[str], partitions: int | None = None
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AdminClient(settings.kafka.librdkafka_common())
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    count = partitions or settings.topics.partitions
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=count, replication_factor=-1) for n in wanted]
    )
    for _name, fut in futures.items():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    log.info("created topics %s partitions=%d", ",".join(wanted), count)
    return wanted


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete topics a demo or benchmark made (a broker slows down with thousands of partitions)."""
    admin = AdminClient(settings.kafka.librdkafka_common())
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in dict.fromkeys(names) if n in existing]
    if not doomed:
        return
    for name, fut in admin.delete_topics(doomed, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
        except KafkaException as exc:
            log.warning("could not delete topic %s: %s", name, exc)


def committed_lag(
    consumer: Consumer, partitions: list[TopicPartition], committed: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """High watermark minus committed offset, as `kafka-consumer-groups --describe` computes it.

    Uses the watermark cached from fetch responses (no broker round trip); falls back to asking the
    broker when nothing has been fetched yet.
    """
    lag: dict[tuple[str, int], int] = {}
    for tp in partitions:
        key = (tp.topic, tp.partition)
        try:
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:
                low, high = consumer.get_watermark_offsets(tp, timeout=2.0, cached=False)
        except KafkaException:
            continue
        position = committed.get(key)
        base = position if position is not None and position >= 0 else low
        lag[key] = max(high - base, 0)
    return lag

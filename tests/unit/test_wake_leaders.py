"""Which partitions a resume queries to wake librdkafka's fetchers (stream.kafka.one_per_leader):
one per leader broker, never one without a leader."""

from __future__ import annotations

from types import SimpleNamespace

from confluent_kafka import TopicPartition

from stream.kafka import one_per_leader


def _topic(leaders: dict[int, int]) -> SimpleNamespace:
    return SimpleNamespace(
        partitions={p: SimpleNamespace(id=p, leader=b) for p, b in leaders.items()}
    )


def _names(tps: list[TopicPartition]) -> list[tuple[str, int]]:
    return [(tp.topic, tp.partition) for tp in tps]


def test_one_partition_per_leader_across_topics() -> None:
    tps = [TopicPartition("a", p) for p in range(4)] + [TopicPartition("b", 0)]
    topics = {"a": _topic({0: 1, 1: 2, 2: 1, 3: 2}), "b": _topic({0: 3})}
    assert _names(one_per_leader(tps, topics)) == [("a", 0), ("a", 1), ("b", 0)]


def test_partitions_without_a_leader_or_metadata_are_left_out() -> None:
    # mid-election (-1): a query to it would wait its whole timeout and wake nothing
    tps = [TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("a", 9)]
    tps += [TopicPartition("gone", 0)]
    topics = {"a": _topic({0: -1, 1: 2}), "gone": None}
    assert _names(one_per_leader(tps, topics)) == [("a", 1)]
    assert one_per_leader(tps, {}) == []

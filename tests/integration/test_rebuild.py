"""Rebuilding the windows from the topic against a real Redis: after a mid-run state loss, and
for a recreated topic. The topic is a list of records here (reading Kafka is stream/kafka.py's,
tested with the broker); the windows are the real store's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import redis

from stream.contracts import Record, Tick, decode_batch, encode_tick
from stream.errors import StateLost
from stream.kafka import Partition
from stream.rebuild import Rebuilder
from stream.windows import WindowStore

pytestmark = pytest.mark.integration

TOPIC = "ticks"


def topic_log(
    n: int, partitions: int = 2, symbols: int = 3, ts: int = 1_000
) -> dict[int, list[Record]]:
    """n records per partition; each symbol lives in one partition."""
    out: dict[int, list[Record]] = {}
    for p in range(partitions):
        out[p] = []
        for o in range(n):
            symbol = f"S{p}-{o % symbols}"
            value = encode_tick(symbol, 100.0 + o + p / 10, ts + o)
            out[p].append(Record(TOPIC, p, o, symbol.encode(), value))
    return out


class Topic:
    def __init__(self, log: dict[int, list[Record]]) -> None:
        self.log = log
        self.reads: list[dict[int, tuple[int, int]]] = []

    def read(self, ranges: Mapping[Partition, tuple[int, int]]) -> Iterator[list[Record]]:
        self.reads.append({p: span for (_, p), span in ranges.items()})
        for (_, p), (start, end) in ranges.items():
            yield self.log[p][start:end]


def batches(log: dict[int, list[Record]], size: int) -> Iterator[list[Record]]:
    n = len(log[0])
    for start in range(0, n, size):
        yield [r for p in sorted(log) for r in log[p][start : start + size]]


def _decode(records: list[Record]) -> list[Tick]:
    ticks, bad = decode_batch(records, 65536)
    assert not bad
    return ticks


def _windows(store: WindowStore, records: list[Record]) -> list[tuple[int, int, bytes]]:
    batch = store.append_batch(_decode(records))
    return [(w.tick.partition, w.tick.offset, w.prices.tobytes()) for w in batch.windows]


def _lose_state(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    client.delete(*keys)


def test_state_lost_mid_run_is_rebuilt_up_to_the_batch_and_no_window_changes(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Issue 15, item 6: the loop's recovery, as the runner does it: StateLost on a batch,
    catch_up to the batch's first offsets, the batch again. Every window equals a clean run's."""
    log = topic_log(40)
    clean = WindowStore(redis_client, f"{key_prefix}:clean", 5, 40, TOPIC)
    expected = [w for b in batches(log, 4) for w in _windows(clean, b)]

    store = WindowStore(redis_client, f"{key_prefix}:run", 5, 40, TOPIC)
    topic = Topic(log)
    rebuilder = Rebuilder(topic.read, store, 65536, max_ticks=10_000)
    got = []
    for i, b in enumerate(batches(log, 4)):
        if i in (3, 7):
            _lose_state(redis_client, f"{key_prefix}:run")
        try:
            got += _windows(store, b)
        except StateLost as lost:
            first = {
                (TOPIC, p): min(r.offset for r in b if r.partition == p) for p in lost.partitions
            }
            assert rebuilder.catch_up(first, {(TOPIC, p): 0 for p in lost.partitions}) > 0
            got += _windows(store, b)
    assert got == expected
    assert topic.reads == [{0: (0, 12), 1: (0, 12)}, {0: (0, 28), 1: (0, 28)}]


def test_a_recreated_topic_is_logged_once_counted_and_started_afresh(
    redis_client: redis.Redis, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15, item 10, on assignment: the high watermarks say which partitions are new."""
    store = WindowStore(redis_client, key_prefix, 5, 40, TOPIC)
    old = topic_log(30)
    for b in batches(old, 10):
        store.append_batch(_decode(b))
    counted: list[Partition] = []
    rebuilder = Rebuilder(Topic(old).read, store, 65536, 10_000, on_recreated=counted.append)
    assert rebuilder.discard_recreated({(TOPIC, 0): 30, (TOPIC, 1): 30}) == []

    new = topic_log(8, ts=9_000)  # the topic made again: 8 records so far in each partition
    with caplog.at_level("WARNING", logger="stream.rebuild"):
        found = rebuilder.discard_recreated({(TOPIC, 0): 8, (TOPIC, 1): 30})
    assert found == counted == [(TOPIC, 0)]
    assert [r.getMessage() for r in caplog.records if "recreated" in r.getMessage()] == [
        "input topic recreated: the window store held offsets beyond its end; "
        f"starting afresh partition={TOPIC}[0] high_watermark=8"
    ]
    assert rebuilder.discard_recreated({(TOPIC, 0): 8}) == []  # once
    counts = store.append_batch(_decode(new[0])).counts
    assert counts["processed"] == 8 and counts["too_old"] == 0

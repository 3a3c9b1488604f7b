"""Rebuild windows from the input topic when Redis has lost them: Redis is a cache of the topic.

The window store writes, with every batch, a per-partition marker: the highest offset it applied.
On assignment, a partition whose marker is below its committed offset has ticks the group has
committed but the store does not hold: Redis was flushed (no marker at all), or restored from an
older snapshot. Those offsets, [marker + 1, committed), are read again and applied to the store in
rebuild mode: windows are updated, nothing is published (their forecasts went out before). Ticks
already in the store are redeliveries to it and change nothing, so a rebuild is safe to repeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.contracts import Tick, decode_batch
from stream.errors import StoreUnavailable

log = logging.getLogger(__name__)


class StoreLike(Protocol):
    def markers(self, partitions: Sequence[int]) -> dict[int, int | None]: ...

    def append_batch(self, ticks: Sequence[Tick]) -> Any: ...


def gaps(
    committed: Mapping[int, int],
    markers: Mapping[int, int | None],
    low_watermarks: Mapping[int, int],
    max_ticks: int,
) -> dict[int, tuple[int, int]]:
    """Per partition, the offsets [start, end) committed but not applied to the store.

    Without a marker the store knows nothing of the partition: start at the oldest retained offset.
    At most `max_ticks` offsets before the committed one are read back.
    """
    out: dict[int, tuple[int, int]] = {}
    for partition, end in committed.items():
        if end <= 0:
            continue
        low = low_watermarks.get(partition, 0)
        marker = markers.get(partition)
        start = max(low, end - max_ticks, (marker + 1) if marker is not None else low)
        if start < end:
            out[partition] = (start, end)
    return out


class Rebuilder:
    def __init__(
        self,
        consumer_conf: dict[str, Any],
        topic: str,
        store: StoreLike,
        max_message_bytes: int,
        max_ticks: int,
        on_rebuilt: Callable[[int], None] = lambda n: None,
        retry_max_s: float = 5.0,
    ) -> None:
        # A consumer of its own, assigned (not subscribed): it reads and never commits.
        self.consumer_conf = {**consumer_conf, "enable.auto.commit": False}
        self.topic = topic
        self.store = store
        self.max_message_bytes = max_message_bytes
        self.max_ticks = max_ticks
        self.on_rebuilt = on_rebuilt
        self.retry_max_s = retry_max_s

    def catch_up(self, consumer: Consumer, committed: Mapping[int, int]) -> int:
        """Apply every committed-but-missing tick of `committed`'s partitions; returns how many."""
        if not committed:
            return 0
        markers = self._retry(lambda: self.store.markers(list(committed)))
        low: dict[int, int] = {}
        for partition in committed:
            try:
                low[partition] = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10
                )[0]
            except KafkaException as exc:
                log.warning("rebuild: no watermarks for %s[%d]: %s", self.topic, partition, exc)
                low[partition] = 0
        todo = gaps(committed, markers, low, self.max_ticks)
        if not todo:
            return 0
        started = time.monotonic()
        applied = self._replay(todo)
        log.info(
            "rebuilt windows from the topic ranges=%s ticks=%d seconds=%.2f",
            ",".join(f"{self.topic}[{p}]:{a}-{b}" for p, (a, b) in sorted(todo.items())),
            applied,
            time.monotonic() - started,
        )
        self.on_rebuilt(applied)
        return applied

    def _replay(self, todo: dict[int, tuple[int, int]]) -> int:
        reader = Consumer(self.consumer_conf)
        reader.assign([TopicPartition(self.topic, p, start) for p, (start, _) in todo.items()])
        open_parts = dict(todo)
        applied = 0
        idle_since = time.monotonic()
        try:
            while open_parts:
                messages = reader.consume(num_messages=1000, timeout=0.5)
                batch = []
                for m in messages:
                    part, offset = m.partition(), m.offset()
                    if m.error() is not None or part not in open_parts or offset is None:
                        continue
                    if offset < open_parts[part][1]:
                        batch.append(m)
                if batch:
                    ticks, _ = decode_batch(batch, self.max_message_bytes)
                    self._retry(lambda ticks=ticks: self.store.append_batch(ticks))  # type: ignore[misc]
                    applied += len(ticks)
                    idle_since = time.monotonic()
                # Done with a partition once its position reaches the end (control records and
                # aborted transactions have offsets but no messages, so compare positions).
                positions = reader.position([TopicPartition(self.topic, p) for p in open_parts])
                for tp in positions:
                    if tp.offset >= open_parts[tp.partition][1]:
                        del open_parts[tp.partition]
                if open_parts and time.monotonic() - idle_since > 30:
                    raise StoreUnavailable(
                        f"rebuild: no progress reading {self.topic} {sorted(open_parts)} for 30 s"
                    )
        finally:
            reader.close()
        return applied

    def _retry(self, call: Callable[[], Any]) -> Any:
        delay = 0.05
        while True:
            try:
                return call()
            except StoreUnavailable as exc:
                log.warning("rebuild: redis unavailable, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

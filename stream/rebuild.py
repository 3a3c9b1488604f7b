"""Rebuild windows from the input topic when Redis has lost them: Redis is a cache of the topic.

The window store writes, with every batch, a per-partition marker: the highest offset it applied.
On assignment (in the loop, before the partition's first batch), a partition whose marker is below
its committed offset has ticks the group has committed but the store does not hold: Redis was
flushed (no marker at all), or restored from an older snapshot. Those offsets, [marker + 1, committed), are read again and applied to the store in
rebuild mode: windows are updated, nothing is published (their forecasts went out before). Ticks
already in the store are redeliveries to it and change nothing, so a rebuild is safe to repeat.

The same applies mid-run: a batch whose partition lost its marker raises StateLost
(stream/windows.py); the loop then catches up to that batch's first offsets (exclusive) and
retries the batch. The markers are read through the store, so it expects them from then on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from stream.contracts import Record, Tick, decode_batch
from stream.errors import StateLost
from stream.kafka import Offsets, Partition

log = logging.getLogger(__name__)


class StoreLike(Protocol):
    def markers(self, partitions: Sequence[int]) -> dict[int, int | None]: ...

    def recreated(self, high_watermarks: Mapping[int, int]) -> list[int]: ...

    def start_afresh(self, partitions: Iterable[int]) -> None: ...

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
    """Brings the window store up to the group's committed offsets, in the loop, before the
    partitions' first batch. Redis errors propagate (StoreUnavailable): the loop retries the whole
    catch-up, which re-reads the markers and so redoes only what is still missing."""

    def __init__(
        self,
        read: Callable[[Mapping[Partition, tuple[int, int]]], Iterable[list[Record]]],
        store: StoreLike,
        max_message_bytes: int,
        max_ticks: int,
        on_rebuilt: Callable[[int], None] = lambda n: None,
        on_recreated: Callable[[Partition], None] = lambda partition: None,
    ) -> None:
        self.read = read
        self.store = store
        self.max_message_bytes = max_message_bytes
        #: a registry format's tick decoder (stream/formats.py); None: JSON
        self.parse: Callable[[bytes], Any] | None = None
        self.max_ticks = max_ticks
        self.on_rebuilt = on_rebuilt
        self.on_recreated = on_recreated

    def discard_recreated(self, high_watermarks: Offsets) -> list[Partition]:
        """On assignment, before `catch_up`: the partitions whose topic was recreated (the store
        holds offsets at or above their high watermark) start afresh in the store; returns them.

        Logged once and counted (`on_recreated`) per partition found: the stale markers would
        have made every new tick `too_old`. Their committed offsets, if the group still has any,
        belong to the old topic too: do not catch up to them.
        """
        by_topic: dict[str, dict[int, int]] = {}
        for (topic, p), high in high_watermarks.items():
            by_topic.setdefault(topic, {})[p] = high
        found: list[Partition] = []
        for topic, highs in by_topic.items():
            stale = self.store.recreated(highs)
            if not stale:
                continue
            self.store.start_afresh(stale)
            for p in stale:
                log.warning(
                    "input topic recreated: the window store held offsets beyond its end; "
                    "starting afresh partition=%s[%d] high_watermark=%d",
                    topic,
                    p,
                    highs[p],
                )
                self.on_recreated((topic, p))
                found.append((topic, p))
        return found

    def catch_up(self, committed: Offsets, low_watermarks: Offsets) -> int:
        """Apply every missing tick below `committed`'s offsets (the group's committed offsets on
        assignment, or a failed batch's first offsets after StateLost); returns how many.

        State lost again while rebuilding (Redis flushed twice in a row) starts over, from the
        markers as they are then; a third time in one call raises StateLost to the loop.
        """
        for attempt in range(3):
            try:
                return self._catch_up(committed, low_watermarks)
            except StateLost as exc:
                if attempt == 2:
                    raise
                log.warning("state lost again while rebuilding partitions=%s", exc.partitions)
        raise AssertionError("unreachable")

    def _catch_up(self, committed: Offsets, low_watermarks: Offsets) -> int:
        if not committed:
            return 0
        topics = {t for t, _ in committed}
        if len(topics) != 1:
            raise ValueError(f"one input topic expected, got {sorted(topics)}")
        [topic] = topics
        by_number = {p: o for (_, p), o in committed.items()}
        markers = self.store.markers(list(by_number))
        low = {p: o for (_, p), o in low_watermarks.items()}
        todo = gaps(by_number, markers, low, self.max_ticks)
        if not todo:
            return 0
        started = time.monotonic()
        applied = 0
        for records in self.read({(topic, p): span for p, span in todo.items()}):
            ticks, _ = decode_batch(records, self.max_message_bytes, parse=self.parse)
            self.store.append_batch(ticks)
            applied += len(ticks)
        log.info(
            "rebuilt windows from the topic ranges=%s ticks=%d seconds=%.2f",
            ",".join(f"{topic}[{p}]:{a}-{b}" for p, (a, b) in sorted(todo.items())),
            applied,
            time.monotonic() - started,
        )
        self.on_rebuilt(applied)
        return applied

"""Between batches, at most every so often: the lag gauges and the window store's trim.

Neither is part of a batch's work, and neither failing may stop the loop: a failed trim is only a
missed saving (the next one covers it), a failed lag read only a stale gauge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream.checkpoint import Checkpoint
from stream.errors import StoreUnavailable
from stream.kafka import EndOffsets, Offsets, Partition
from stream.metrics import Metrics
from stream.ports import SourcePort

log = logging.getLogger(__name__)

#: seconds between two trims and two lag reads
TRIM_EVERY_S = 0.5
LAG_EVERY_S = 1.0


class Upkeep:
    def __init__(
        self,
        source: SourcePort,
        checkpoint: Checkpoint,
        metrics: Metrics,
        trim: Callable[[Offsets], None],
        end_offsets: EndOffsets | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.checkpoint = checkpoint
        self.metrics = metrics
        #: shrinks the window store to what redelivery can still need after commits
        self.trim = trim
        self._trimmed: Offsets = {}
        self._last_trim = 0.0
        self._last_lag = 0.0
        self.end_offsets = end_offsets
        self.wall_clock = wall_clock
        #: partition -> Kafka timestamp of the last tick seen in a batch in flight
        self._seen_ts: dict[Partition, int] = {}

    def run(self, assignment: list[Partition]) -> None:
        now = time.monotonic()
        if now - self._last_trim >= TRIM_EVERY_S:
            self._trim(now)
        if now - self._last_lag >= LAG_EVERY_S:
            self._last_lag = now
            self._lag(assignment)

    def _lag(self, assignment: list[Partition]) -> None:
        """Lag in offsets: the broker's end offset (read by EndOffsets' thread) minus the
        committed offset, as Kafka's own group tools compute it. Lag in seconds: the age of the
        oldest tick not yet committed (the first one in a batch in flight, else the last one
        seen, since what follows it is newer)."""
        if self.end_offsets is None:
            return
        self.end_offsets.watch(assignment)
        ends, starts = self.end_offsets.latest, self.end_offsets.earliest
        committed = self.checkpoint.committed
        oldest: dict[Partition, int] = {}
        for batch in list(self.checkpoint.open):
            for r in batch.records:
                key = (r.topic, r.partition)
                oldest.setdefault(key, r.timestamp)
                self._seen_ts[key] = r.timestamp
        now_ms = self.wall_clock() * 1000.0
        for p in assignment:
            if p not in ends:
                continue
            lag = max(ends[p] - committed.get(p, starts.get(p, 0)), 0)
            stamp = oldest.get(p, self._seen_ts.get(p, -1))
            age = max(now_ms - stamp, 0.0) / 1000.0 if lag and stamp > 0 else 0.0
            topic, part = p
            self.metrics.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)
            self.metrics.consumer_lag_seconds.labels(topic=topic, partition=str(part)).set(age)

    def _trim(self, now: float) -> None:
        committed = self.checkpoint.committed
        if committed == self._trimmed:
            return
        self._last_trim = now
        try:
            self.trim(dict(committed))
        except StoreUnavailable as exc:
            self.metrics.redis_errors.inc()
            log.warning("window trim failed (retried after the next commit): %s", exc)
            return
        self._trimmed = dict(committed)

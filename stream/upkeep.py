"""Between batches, at most every so often: the lag gauge and the window store's trim.

Neither is part of a batch's work, and neither failing may stop the loop: a failed trim is only a
missed saving (the next one covers it), a failed lag read only a stale gauge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream.checkpoint import Checkpoint
from stream.errors import StoreUnavailable
from stream.kafka import Offsets, Partition
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
    ) -> None:
        self.source = source
        self.checkpoint = checkpoint
        self.metrics = metrics
        #: shrinks the window store to what redelivery can still need after commits
        self.trim = trim
        self._trimmed: Offsets = {}
        self._last_trim = 0.0
        self._last_lag = 0.0

    def run(self, assignment: list[Partition]) -> None:
        now = time.monotonic()
        if now - self._last_trim >= TRIM_EVERY_S:
            self._trim(now)
        if assignment and now - self._last_lag >= LAG_EVERY_S:
            self._last_lag = now
            lags = self.source.lag(assignment, self.checkpoint.committed)
            for (topic, part), lag in lags.items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)

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

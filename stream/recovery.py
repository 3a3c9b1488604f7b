"""Recovery, done in the loop between batches (as quix-streams does), never in a rebalance
callback: what a new assignment needs before its first batch, and what a loss of Redis state
found by a batch needs before that batch.

    assignment:  paused by the Source -> the group's committed offsets -> partitions whose topic
                 was recreated start afresh -> windows rebuilt up to the committed offsets ->
                 resumed
    StateLost:   windows of the lost partitions rebuilt up to the batch's first offsets; the
                 batch is then retried (nothing of it was applied)

Kafka errors while recovering are retried like Redis errors: the partitions stay paused, or the
batch waits; nothing is committed meanwhile.
"""

from __future__ import annotations

import logging

from stream.checkpoint import Checkpoint
from stream.errors import KafkaFailure, StateLost, StoreUnavailable
from stream.kafka import Offsets, Partition
from stream.ports import RebuilderPort, SourcePort
from stream.retry import RedisRetry

log = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self,
        source: SourcePort,
        checkpoint: Checkpoint,
        rebuilder: RebuilderPort | None,
        redis_retry: RedisRetry,
    ) -> None:
        self.source = source
        self.checkpoint = checkpoint
        self.rebuilder = rebuilder
        self.redis_retry = redis_retry
        #: assigned partitions, paused until their committed offsets are read and windows rebuilt
        self.pending: list[Partition] = []
        #: partitions whose windows must be rebuilt up to these offsets before the next batch
        self._rebuilding: Offsets = {}

    def assigned(self, partitions: list[Partition]) -> None:
        self.pending += partitions

    def forget(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        self.pending = [p for p in self.pending if p not in gone]
        for p in gone:
            self._rebuilding.pop(p, None)

    def run(self) -> None:
        """Recover the pending partitions and resume them; on a Kafka error, try again later."""
        parts, self.pending = self.pending, []
        try:
            committed = self.source.committed(parts)
            if self.rebuilder is not None:
                # A recreated topic starts afresh; the group's offsets there belong to the old one.
                high = self.source.high_watermarks(parts)
                recreated = set(self.redis_retry(lambda: self._recreated(high)) or ())
                committed = {p: o for p, o in committed.items() if p not in recreated}
            self.checkpoint.assigned(committed)
        except KafkaFailure as exc:
            log.warning("recovery of %s deferred: %s", names(parts), exc)
            self.pending = parts + self.pending
            return
        if self.redis_retry(lambda: self.catch_up(committed)) is None:
            return  # a stop came while Redis was down
        self.source.resume(parts)

    def rebuild_before(self, first: Offsets, lost: StateLost) -> None:
        """Redis lost the state of `lost.partitions`: rebuild them up to the batch whose first
        offsets are `first`. Raises StoreUnavailable (retried) if that fails for now; the rebuild
        stays pending until `finish_rebuild` completes it."""
        gone = set(lost.partitions)
        upto = {p: o for p, o in first.items() if p[1] in gone}
        log.warning("%s; rebuilding up to %s", lost, offsets(upto))
        for p, o in upto.items():
            self._rebuilding[p] = min(o, self._rebuilding.get(p, o))
        self.finish_rebuild()

    def finish_rebuild(self) -> None:
        """Complete a rebuild that is pending (one that Redis failed during)."""
        if self._rebuilding:
            self.catch_up(self._rebuilding)
            self._rebuilding = {}

    def catch_up(self, upto: Offsets) -> bool:
        """Rebuild the windows of `upto`'s partitions up to those offsets (exclusive)."""
        if self.rebuilder is not None and upto:
            try:
                self.rebuilder.catch_up(upto, self.source.low_watermarks(list(upto)))
            except (KafkaFailure, StateLost) as exc:
                raise StoreUnavailable(f"rebuild: {exc}") from None
        return True

    def _recreated(self, high: Offsets) -> list[Partition]:
        assert self.rebuilder is not None
        return self.rebuilder.discard_recreated(high)


def offsets(offsets: Offsets) -> str:
    return ",".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items())) or "-"


def names(partitions: list[Partition]) -> str:
    return ",".join(f"{t}[{p}]" for t, p in partitions) or "-"

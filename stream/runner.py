"""The loop: poll, hand the batch to the pipeline, hand its output to the checkpoint, repeat.

    consume (up to max_batch) -> checkpoint.open_batch -> pipeline.prepare (Redis)
        -> compute + fill (the model; on the model thread for a full at-least-once batch)
        -> pipeline.finish -> checkpoint.publish -> checkpoint.settle (commits what is due)

Under load the model call of batch N (ONNX Runtime releases the GIL) overlaps the decoding, window
update and publishing of batches N-1 and N+1; batches are still published, and so committed, in
order. A batch that is not full is computed at once, for latency. The rest is delegated:

    stream/checkpoint.py  what is committed, when, and what a failure rewinds
    stream/recovery.py    what an assignment or a loss of Redis state needs, done between batches
    stream/retry.py       Redis steps retried with capped backoff (/readyz says not ready)
    stream/upkeep.py      the lag gauge and the window store's trim

A stop request (stream/commands/run.py turns SIGTERM/SIGINT into one) only sets a flag and a
deadline: the loop finishes the batch in hand and the checkpoint delivers and commits what it can
within processing.shutdown_timeout_s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from stream.checkpoint import Batch, Checkpoint
from stream.contracts import Record
from stream.errors import StateLost, StoreUnavailable
from stream.kafka import EndOffsets, Offsets, Partition
from stream.metrics import Health, Metrics
from stream.pipeline import Prepared
from stream.ports import PipelinePort, RebuilderPort, SourcePort
from stream.recovery import Recovery, names
from stream.retry import RedisRetry
from stream.upkeep import Upkeep

log = logging.getLogger(__name__)

#: the longest wait for records while nothing is assigned (see Runner._next_batch)
UNASSIGNED_POLL_S = 0.02


@dataclass(frozen=True)
class RunnerConfig:
    max_batch: int
    poll_timeout_s: float
    max_message_bytes: int
    #: at-least-once batches opened and not yet acknowledged (the window history covers them)
    max_in_flight: int = 2
    redis_retry_max_s: float = 5.0
    delivery_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    #: overlap a full batch's model call with the loop (at-least-once only)
    model_thread: bool = True


@dataclass
class _Computing:
    """A full batch whose model call and cache fill run on the model thread."""

    batch: Batch
    prepared: Prepared
    future: Future[None]


class Runner:
    def __init__(
        self,
        config: RunnerConfig,
        source: SourcePort,
        checkpoint: Checkpoint,
        pipeline: PipelinePort,
        metrics: Metrics,
        health: Health,
        *,
        rebuilder: RebuilderPort | None = None,
        trim: Callable[[Offsets], None] = lambda committed: None,
        end_offsets: EndOffsets | None = None,
        between_batches: Callable[[], None] = lambda: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.source = source
        self.checkpoint = checkpoint
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health
        self.between_batches = between_batches
        self.wall_clock = wall_clock
        self.stopping = False
        self._stop_deadline = 0.0
        self.assignment: list[Partition] = []
        self.computing: _Computing | None = None
        self._model_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickcast-model")
            if config.model_thread
            else None
        )
        self.with_redis = RedisRetry(
            metrics, health, lambda: self.stopping, config.redis_retry_max_s
        )
        self.recovery = Recovery(source, checkpoint, rebuilder, self.with_redis)
        self.upkeep = Upkeep(source, checkpoint, metrics, trim, end_offsets, wall_clock)

    def stop(self) -> None:
        if not self.stopping:
            # From here on no Kafka or Redis wait may outlast processing.shutdown_timeout_s.
            self._stop_deadline = time.monotonic() + self.config.shutdown_timeout_s
            self.checkpoint.stop_by(self._stop_deadline)
        self.stopping = True
        self.health.stopping = True

    def run(self) -> bool:
        """Consume until stop(); then deliver and commit. True if nothing was left undone."""
        try:
            while not self.stopping:
                self.health.beat()
                if self.recovery.pending:
                    self.recovery.run()
                records = self._next_batch()
                if records:
                    self._handle(records)
                self._settle()
                self.upkeep.run(self.assignment)
                self.between_batches()
            self._complete_computing()
        finally:
            # After an error the batch in the model is abandoned: uncommitted, so redone.
            self.computing = None
            timeout = self.config.shutdown_timeout_s
            if self.stopping:
                timeout = max(self._stop_deadline - time.monotonic(), 0.0)
            clean = self.checkpoint.close(timeout)
            if self.stopping:  # bounded too: what is left of the deadline, and a moment
                self.source.close(max(self._stop_deadline - time.monotonic(), 0.0) + 0.5)
            else:
                self.source.close()
            if self._model_thread is not None:
                self._model_thread.shutdown(wait=False, cancel_futures=True)
            log.info("stopped clean=%s", clean)
        return clean

    # ------------------------------------------------------------ rebalance (inside consume)

    def on_assign(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        self.recovery.assigned(partitions)
        self._set_assignment(self.assignment + partitions)
        log.info("assigned partitions=%s (paused until recovered)", names(partitions))

    def on_revoke(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="revoke").inc()
        self._complete_computing()
        self._settle()
        self.checkpoint.revoke(partitions, self.config.delivery_timeout_s)
        self._settle()
        self._forget(partitions)
        log.info("revoked partitions=%s", names(partitions))

    def on_lost(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        self.computing = None
        self.checkpoint.lost(partitions)
        self._forget(partitions)
        log.warning(
            "lost partitions=%s (uncommitted; the new owner redoes them)", names(partitions)
        )

    def _forget(self, partitions: list[Partition]) -> None:
        self.recovery.forget(partitions)
        gone = set(partitions)
        self._set_assignment([p for p in self.assignment if p not in gone])
        for topic, part in gone:
            self.metrics.forget_partition(topic, part)

    def _set_assignment(self, partitions: list[Partition]) -> None:
        self.assignment = partitions
        self.health.assigned = len(partitions)
        self.metrics.assigned_partitions.set(len(partitions))

    # ------------------------------------------------------------ one batch

    def _next_batch(self) -> list[Record]:
        """Whatever is queued, up to max_batch, without waiting for a full batch: at a light load
        consume(n, timeout) would add the whole timeout to every tick's latency. If nothing is
        queued, publish the batch in the model, wait for one record, take what came with it."""
        batch = self.config.max_batch
        records = self.source.consume(batch, 0)
        if records or self.recovery.pending:
            # A new assignment (it arrived paused, inside that call) is recovered now, not after
            # a wait on partitions that cannot deliver anything yet.
            return records
        self._complete_computing()
        # Until something is assigned, the assignment itself comes inside this wait (a
        # rebalance callback), paused, and librdkafka goes on waiting the whole timeout on
        # partitions that cannot deliver: short waits, so it is recovered at once.
        timeout = self.config.poll_timeout_s
        if not self.assignment:
            timeout = min(timeout, UNASSIGNED_POLL_S)
        records = self.source.consume(1, timeout)
        if records and batch > 1:
            records += self.source.consume(batch - 1, 0)
        return records

    def _handle(self, records: list[Record]) -> None:
        batch = self.checkpoint.open_batch(records)
        # At most max_in_flight batches appended to the windows and not yet acknowledged, besides
        # this one (window.history is checked at start to cover them).
        while self.checkpoint.in_flight > self.config.max_in_flight and not batch.dropped:
            if self.stopping:
                return  # left uncommitted; the stop delivers and commits what came before it
            if self.checkpoint.in_flight - (self.computing is not None) > 1:
                self._settle(wait=True)
            else:
                self._complete_computing()
        if batch.dropped:
            return  # rewound while it waited: read again, so not applied to the windows now
        prepared = self.with_redis(lambda: self._prepare(batch))
        if prepared is None or batch.dropped:
            return  # abandoned during a stop, or rewound: never published, never committed
        previous, self.computing = self.computing, None
        if previous is not None and not self._await(previous):
            return  # a stop abandoned the previous batch: this one must not pass it
        if (
            self._model_thread is not None
            and len(records) >= self.config.max_batch
            and prepared.misses
        ):
            future = self._model_thread.submit(self._compute_and_fill, prepared)
            self.computing = _Computing(batch, prepared, future)
        if previous is not None:
            self.checkpoint.publish(previous.batch, self.pipeline.finish(previous.prepared))
        if self.computing is None and self._compute(prepared):
            self.checkpoint.publish(batch, self.pipeline.finish(prepared))

    def _prepare(self, batch: Batch) -> Prepared:
        """pipeline.prepare; if Redis lost the state of the batch's partitions (flushed,
        restarted empty), rebuild their windows up to this batch and try again. Nothing of the
        batch was applied, so no forecast is lost or changed."""
        while True:
            # A rebuild that Redis failed during (it is retried from here) is finished first:
            # the store no longer checks those partitions' markers, so the batch must not land
            # on a Redis that lost them again.
            self.recovery.finish_rebuild()
            try:
                return self.pipeline.prepare(batch.records, self.config.max_message_bytes)
            except StateLost as lost:
                self.metrics.state_losses.inc()
                self.recovery.rebuild_before(batch.first, lost)

    def _compute_and_fill(self, prepared: Prepared) -> None:
        """On the model thread. A failed fill is retried by the loop (`_await`)."""
        self.pipeline.compute(prepared)
        self.pipeline.fill(prepared)

    def _compute(self, prepared: Prepared) -> bool:
        """On the loop's thread: the model call, then the fill; False if a stop abandoned it."""
        try:
            self.pipeline.compute(prepared)
        except Exception:
            self.metrics.record_inference_error(prepared.predictor.version)
            raise
        return self._fill(prepared)

    def _await(self, computing: _Computing) -> bool:
        """Wait for the model thread's work; False if a stop abandoned it."""
        # A StoreUnavailable comes from the fill, after the model call: the fill is retried below.
        try:
            computing.future.result()
        except StoreUnavailable:
            pass
        except Exception:
            self.metrics.record_inference_error(computing.prepared.predictor.version)
            raise
        return self._fill(computing.prepared)

    def _fill(self, prepared: Prepared) -> bool:
        """Cache the batch's outputs (a no-op once done); False if a stop abandoned it."""

        def fill() -> bool:
            self.pipeline.fill(prepared)
            return True

        return self.with_redis(fill) is not None

    def _complete_computing(self) -> None:
        """Publish the batch on the model thread, if any, once its work is done."""
        computing, self.computing = self.computing, None
        if computing is not None and not computing.batch.dropped and self._await(computing):
            self.checkpoint.publish(computing.batch, self.pipeline.finish(computing.prepared))

    def _settle(self, wait: bool = False) -> None:
        self.metrics.record_batches(self.checkpoint.settle(wait), self.wall_clock() * 1000.0)
        if self.computing is not None and self.computing.batch.dropped:
            self.computing = None  # rewound with the failed batch before it

"""The loop: poll, hand the batch to the pipeline, hand its output to the checkpoint, repeat.

    consume (up to max_batch) -> checkpoint.open_batch -> pipeline.prepare (Redis)
        -> compute + fill (the model; on the model thread for a full at-least-once batch)
        -> pipeline.finish -> checkpoint.publish -> checkpoint.settle (commits what is due)

Under load the model call of batch N (ONNX Runtime releases the GIL) overlaps the decoding, window
update and publishing of batches N-1 and N+1; batches are still published, and so committed, in
order. A batch that is not full is computed at once, for latency. What is committed, when, and what
a failure rewinds is the checkpoint's business (stream/checkpoint.py), not the loop's.

Work a rebalance asks for (reading the committed offsets, rebuilding lost windows) is flagged by
the callback and done here, between batches: a new assignment arrives paused and is resumed once
that is done. Redis unavailable: the batch's Redis step is retried with capped exponential backoff
(redis-py's Retry) while nothing is consumed (in effect the partitions are paused); /readyz says
not ready. Signals only set a flag; the loop finishes the batch in hand, and the checkpoint
delivers and commits within processing.shutdown_timeout_s.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Protocol, TypeVar

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stream.checkpoint import Batch, Checkpoint
from stream.contracts import Record
from stream.errors import KafkaFailure, StateLost, StoreUnavailable
from stream.kafka import Offsets, Partition
from stream.metrics import Health, Metrics
from stream.pipeline import BatchResult, Prepared

log = logging.getLogger(__name__)

T = TypeVar("T")


class PipelineLike(Protocol):
    """stream.pipeline.Pipeline, in the four steps the loop schedules."""

    def prepare(self, records: list[Record], max_message_bytes: int) -> Prepared: ...
    def compute(self, prepared: Prepared) -> None: ...
    def fill(self, prepared: Prepared) -> None: ...
    def finish(self, prepared: Prepared) -> BatchResult: ...


class SourceLike(Protocol):
    """The consumer as the loop uses it (stream.kafka.Source)."""

    def consume(self, max_records: int, timeout: float) -> list[Record]: ...
    def committed(self, partitions: list[Partition], timeout: float = ...) -> Offsets: ...
    def low_watermarks(self, partitions: list[Partition], timeout: float = ...) -> Offsets: ...
    def high_watermarks(self, partitions: list[Partition], timeout: float = ...) -> Offsets: ...
    def resume(self, partitions: list[Partition]) -> None: ...
    def lag(self, partitions: list[Partition], committed: Mapping[Partition, int]) -> Offsets: ...
    def close(self) -> None: ...


class RecoveryLike(Protocol):
    """stream.rebuild.Rebuilder: bring the windows up to the committed offsets."""

    def discard_recreated(self, high_watermarks: Offsets) -> list[Partition]: ...
    def catch_up(self, committed: Offsets, low_watermarks: Offsets) -> int: ...


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


class _Abandoned(Exception):
    """A stop request arrived while a batch waited for Redis."""


class Runner:
    def __init__(
        self,
        config: RunnerConfig,
        source: SourceLike,
        checkpoint: Checkpoint,
        pipeline: PipelineLike,
        metrics: Metrics,
        health: Health,
        *,
        recovery: RecoveryLike | None = None,
        trim: Callable[[Offsets], None] = lambda committed: None,
        between_batches: Callable[[], None] = lambda: None,
        on_sighup: Callable[[], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.source = source
        self.checkpoint = checkpoint
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health
        self.recovery = recovery
        #: shrinks the window store to what redelivery can still need after commits
        self.trim = trim
        self._trimmed: Offsets = {}
        self._last_trim = 0.0
        self.between_batches = between_batches
        self.on_sighup = on_sighup
        self.wall_clock = wall_clock
        self.stopping = False
        self._stop_deadline = 0.0
        self.assignment: list[Partition] = []
        #: assigned partitions, paused until their committed offsets are read and windows rebuilt
        self.to_recover: list[Partition] = []
        self.computing: _Computing | None = None
        self._model_thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickcast-model")
            if config.model_thread
            else None
        )
        self._redis_retry = Retry(
            ExponentialBackoff(cap=config.redis_retry_max_s, base=0.05), -1, (StoreUnavailable,)
        )
        self._last_lag_update = 0.0

    # ------------------------------------------------------------ lifecycle

    def install_signal_handlers(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal=%s stopping after the current batch", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if self.on_sighup is not None:
            sighup = self.on_sighup
            signal.signal(signal.SIGHUP, lambda signum, frame: sighup())

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
                if self.to_recover:
                    self._recover()
                records = self._next_batch()
                if records:
                    self._handle(records)
                self._settle()
                self._trim()
                self._update_lag()
                self.between_batches()
            self._complete_computing()
        finally:
            # After an error the batch in the model is abandoned: uncommitted, so redone.
            self.computing = None
            timeout = (
                max(self._stop_deadline - time.monotonic(), 0.0)
                if self.stopping
                else self.config.shutdown_timeout_s
            )
            clean = self.checkpoint.close(timeout)
            self.source.close()
            if self._model_thread is not None:
                self._model_thread.shutdown(wait=False, cancel_futures=True)
            log.info("stopped clean=%s", clean)
        return clean

    # ------------------------------------------------------------ rebalance (inside consume)

    def on_assign(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        self.to_recover += partitions
        self._set_assignment(self.assignment + partitions)
        log.info("assigned partitions=%s (paused until recovered)", _names(partitions))

    def on_revoke(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="revoke").inc()
        self._complete_computing()
        self._record(self.checkpoint.settle())
        self.checkpoint.revoke(partitions, self.config.delivery_timeout_s)
        self._record(self.checkpoint.settle())
        self._forget(partitions)
        log.info("revoked partitions=%s", _names(partitions))

    def on_lost(self, partitions: list[Partition]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        self.computing = None
        self.checkpoint.lost(partitions)
        self._forget(partitions)
        log.warning(
            "lost partitions=%s (not committed; the new owner redoes them)", _names(partitions)
        )

    def _forget(self, partitions: list[Partition]) -> None:
        gone = set(partitions)
        self.to_recover = [p for p in self.to_recover if p not in gone]
        self._set_assignment([p for p in self.assignment if p not in gone])
        for topic, part in gone:
            self.metrics.forget_partition(topic, part)

    def _set_assignment(self, partitions: list[Partition]) -> None:
        self.assignment = partitions
        self.health.assigned = len(partitions)
        self.metrics.assigned_partitions.set(len(partitions))

    def _recover(self) -> None:
        """Read the new partitions' committed offsets, rebuild what Redis lost, resume them."""
        parts, self.to_recover = self.to_recover, []
        try:
            committed = self.source.committed(parts)
            if self.recovery is not None:
                # A recreated topic starts afresh; the group's offsets there belong to the old one.
                high = self.source.high_watermarks(parts)
                recreated = set(self._with_redis(lambda: self._recreated(high)) or ())
                committed = {p: o for p, o in committed.items() if p not in recreated}
            self.checkpoint.assigned(committed)
        except KafkaFailure as exc:
            log.warning("recovery of %s deferred: %s", _names(parts), exc)
            self.to_recover = parts + self.to_recover
            return
        if self._with_redis(lambda: self._catch_up(committed)) is None:
            return  # a stop came while Redis was down
        self.source.resume(parts)

    # ------------------------------------------------------------ one batch

    def _next_batch(self) -> list[Record]:
        """Whatever is queued, up to max_batch, without waiting for a full batch: at a light load
        consume(n, timeout) would add the whole timeout to every tick's latency. If nothing is
        queued, publish the batch in the model, wait for one record, take what came with it."""
        batch = self.config.max_batch
        records = self.source.consume(batch, 0)
        if records:
            return records
        self._complete_computing()
        records = self.source.consume(1, self.config.poll_timeout_s)
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
        prepared = self._with_redis(lambda: self._prepare(batch))
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
        restarted empty), rebuild their windows from the topic up to this batch and try again.
        Nothing of the batch was applied, so no forecast is lost or changed."""
        while True:
            try:
                return self.pipeline.prepare(batch.records, self.config.max_message_bytes)
            except StateLost as lost:
                self.metrics.state_losses.inc()
                lost_parts = set(lost.partitions)
                upto = {p: o for p, o in batch.first.items() if p[1] in lost_parts}
                log.warning("%s; rebuilding up to %s", lost, _offsets(upto))
                self._catch_up(upto)

    def _recreated(self, high: Offsets) -> list[Partition]:
        assert self.recovery is not None
        return self.recovery.discard_recreated(high)

    def _catch_up(self, upto: Offsets) -> bool:
        """Rebuild the windows of `upto`'s partitions up to those offsets (exclusive). A Kafka
        error or a new loss meanwhile is retried like Redis: the batch waits, nothing is
        committed."""
        if self.recovery is not None and upto:
            try:
                self.recovery.catch_up(upto, self.source.low_watermarks(list(upto)))
            except (KafkaFailure, StateLost) as exc:
                raise StoreUnavailable(f"rebuild: {exc}") from None
        return True

    def _compute_and_fill(self, prepared: Prepared) -> None:
        """On the model thread. A failed fill is retried by the loop (`_await`)."""
        self.pipeline.compute(prepared)
        self.pipeline.fill(prepared)

    def _compute(self, prepared: Prepared) -> bool:
        """On the loop's thread: the model call, then the fill; False if a stop abandoned it."""
        self.pipeline.compute(prepared)
        return self._fill(prepared)

    def _await(self, computing: _Computing) -> bool:
        """Wait for the model thread's work; False if a stop abandoned it."""
        # A StoreUnavailable comes from the fill, after the model call: the fill is retried below.
        with contextlib.suppress(StoreUnavailable):
            computing.future.result()
        return self._fill(computing.prepared)

    def _fill(self, prepared: Prepared) -> bool:
        """Cache the batch's outputs (a no-op once done); False if a stop abandoned it."""

        def fill() -> bool:
            self.pipeline.fill(prepared)
            return True

        return self._with_redis(fill) is not None

    def _complete_computing(self) -> None:
        """Publish the batch on the model thread, if any, once its work is done."""
        computing, self.computing = self.computing, None
        if computing is not None and not computing.batch.dropped and self._await(computing):
            self.checkpoint.publish(computing.batch, self.pipeline.finish(computing.prepared))

    def _settle(self, wait: bool = False) -> None:
        self._record(self.checkpoint.settle(wait))
        if self.computing is not None and self.computing.batch.dropped:
            self.computing = None  # rewound with the failed batch before it

    def _record(self, done: list[Batch]) -> None:
        now_ms = self.wall_clock() * 1000.0
        for batch in done:
            if batch.output is not None:
                self.metrics.record_batch(batch.output, batch.records, batch.opened_at, now_ms)
            for what in batch.latch.undeliverable:
                self.metrics.kafka_errors.labels(code="dead_letter_undeliverable").inc()
                log.error("dead letter refused by the broker, skipped %s", what)

    def _with_redis(self, step: Callable[[], T]) -> T | None:
        """Run a step that needs Redis, retrying with capped backoff while Redis is unavailable;
        None if a stop request came meanwhile (the batch is abandoned, uncommitted)."""

        def failed(exc: Exception) -> None:
            self.metrics.redis_errors.inc()
            self.health.redis_ok = False
            if self.stopping:
                raise _Abandoned from exc
            log.warning("redis unavailable, retrying: %s", exc)

        try:
            result = self._redis_retry.call_with_retry(step, failed)
        except _Abandoned:
            log.warning("redis unavailable while stopping; batch left uncommitted")
            return None
        if not self.health.redis_ok:
            log.info("redis reachable again; resuming")
            self.health.redis_ok = True
        return result

    def _trim(self) -> None:
        """After commits, at most twice a second: shrink the window keys of what was committed.
        A failure is only a missed saving (the next trim covers it): counted, never fatal."""
        now = time.monotonic()
        committed = self.checkpoint.committed
        if committed == self._trimmed or now - self._last_trim < 0.5:
            return
        self._last_trim = now
        try:
            self.trim(dict(committed))
        except StoreUnavailable as exc:
            self.metrics.redis_errors.inc()
            log.warning("window trim failed (retried after the next commit): %s", exc)
            return
        self._trimmed = dict(committed)

    def _update_lag(self) -> None:
        """Refresh the lag gauge, at most once a second."""
        now = time.monotonic()
        if not self.assignment or now - self._last_lag_update < 1.0:
            return
        self._last_lag_update = now
        for (topic, part), lag in self.source.lag(
            self.assignment, self.checkpoint.committed
        ).items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)


def _offsets(offsets: Offsets) -> str:
    return ",".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items())) or "-"


def _names(partitions: list[Partition]) -> str:
    return ",".join(f"{t}[{p}]" for t, p in partitions) or "-"

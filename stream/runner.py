"""The consume-process-produce-commit loop.

One batch at a time, on the main thread:

    consume(up to max_batch) -> pipeline.process (Redis + model) -> produce forecasts and dead
    letters -> (delivery reports) -> commit the offsets of wholly acknowledged batches, in order
    (exactly-once: produce -> send offsets to the transaction -> commit the transaction)

At-least-once: a published batch is not waited for. Up to `max_in_flight` batches may await their
delivery reports while the next one is processed; batches are committed in order, each only once
every one of its messages is acknowledged (never ahead of delivery). Commits are asynchronous (a
synchronous one put a ~7 ms broker round trip on every batch); offsets are cumulative, so a lost
async commit is superseded by the next; on revoke and on close the producer is flushed and the
delivered offsets are committed synchronously. Exactly-once: one transaction per batch, committed
before the next batch starts. Either way a batch is never half done when `consume` (and with it a
rebalance callback) runs. Failure paths:

- Redis unreachable: the batch is retried with capped exponential backoff. `consume` is not called
  meanwhile, so fetching stops (in effect the partitions are paused); /readyz says not ready.
  Nothing is committed until the batch succeeds. A stop request abandons the batch uncommitted.
- Delivery or transaction failure: the transaction is aborted (exactly-once) and the consumer is
  rewound to the first offsets of the failed batch and of every batch after it, so they are
  processed again; the window store and the cache make the repeat identical.
- Signals only set a flag; the loop finishes the batch in hand, commits, closes and returns.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol, TypeVar

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from stream.contracts import (
    Forecast,
    Rejected,
    dead_letter_headers,
    encode_forecast,
    forecast_headers,
)
from stream.errors import DeliveryError, StoreUnavailable
from stream.kafka import DeliveryLatch, committed_lag, produce
from stream.metrics import Health, Metrics
from stream.pipeline import Prepared
from stream.rebuild import Rebuilder

log = logging.getLogger(__name__)


class BatchResultLike(Protocol):
    forecasts: list[Forecast]
    dead_letters: list[Rejected]
    counts: dict[str, int]
    cache_hits: int
    cache_misses: int
    non_finite: int
    stage_seconds: dict[str, float]
    inference_batch_size: int


class PipelineLike(Protocol):
    """stream.pipeline.Pipeline, in the four steps the runner schedules."""

    def prepare(self, messages: Sequence[Message], max_message_bytes: int) -> Prepared: ...
    def compute(self, prepared: Prepared) -> None: ...
    def fill(self, prepared: Prepared) -> None: ...
    def finish(self, prepared: Prepared) -> BatchResultLike: ...


T = TypeVar("T")


@dataclass
class _InFlight:
    """A published at-least-once batch waiting for its delivery reports."""

    messages: list[Message]
    result: BatchResultLike
    started: float
    latch: DeliveryLatch = field(default_factory=DeliveryLatch)

    @property
    def offsets(self) -> list[TopicPartition]:
        return _next_offsets(self.messages)


@dataclass
class _Computing:
    """A prepared batch whose model call and cache fill run on the model thread."""

    messages: list[Message]
    prepared: Prepared
    future: Future[None]
    started: float


@dataclass(frozen=True)
class RunnerConfig:
    forecasts_topic: str
    dead_letter_topic: str
    max_batch: int
    poll_timeout_s: float
    max_message_bytes: int
    exactly_once: bool
    redis_retry_max_s: float = 5.0
    delivery_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    #: at-least-once batches published but not yet acknowledged
    max_in_flight: int = 2
    #: delivered offsets are committed this often, or once max_batch ticks await a commit; the
    #: window history must cover max_batch * (max_in_flight + 1) ticks (checked at start)
    commit_interval_s: float = 0.1


class Runner:
    def __init__(
        self,
        config: RunnerConfig,
        consumer: Consumer,
        producer: Producer,
        pipeline: PipelineLike,
        metrics: Metrics,
        health: Health,
        *,
        rebuilder: Rebuilder | None = None,
        between_batches: Callable[[], None] = lambda: None,
        on_sighup: Callable[[], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.pipeline = pipeline
        self.metrics = metrics
        self.health = health
        self.wall_clock = wall_clock
        self.rebuilder = rebuilder
        self.between_batches = between_batches
        self.on_sighup = on_sighup
        self.latch = DeliveryLatch()  # exactly-once batches
        self.in_flight: deque[_InFlight] = deque()
        #: at-least-once: the full batch in the model while the loop prepares the next one
        self.computing: _Computing | None = None
        self._model_thread = (
            None
            if config.exactly_once
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickcast-model")
        )
        self._uncommitted = 0  # delivered ticks whose offsets are not yet committed
        self._last_commit = time.monotonic()
        self.stopping = False
        self.assignment: list[TopicPartition] = []
        #: next offset to read per (topic, partition), as the group has it committed
        self.committed: dict[tuple[str, int], int] = {}
        #: next offset per partition whose output is delivered (committed, or being committed)
        self.delivered: dict[tuple[str, int], int] = {}
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

            def reload(signum: int, frame: FrameType | None) -> None:
                log.info("signal=SIGHUP model reload at the next batch boundary")
                sighup()

            signal.signal(signal.SIGHUP, reload)

    def stop(self) -> None:
        self.stopping = True
        self.health.stopping = True

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        try:
            for tp in consumer.committed(partitions, timeout=10):
                if tp.offset >= 0:
                    self.committed[(tp.topic, tp.partition)] = tp.offset
        except KafkaException as exc:
            log.warning("could not read committed offsets on assign: %s", exc)
        if self.rebuilder is not None:
            # Before the first batch of these partitions: windows must hold every committed tick.
            assigned = {(tp.topic, tp.partition) for tp in partitions}
            self.rebuilder.catch_up(
                consumer, {p: o for (t, p), o in self.committed.items() if (t, p) in assigned}
            )
        self.assignment = list(partitions)
        self.health.assigned = len(self.assignment)
        self.metrics.assigned_partitions.set(len(self.assignment))
        log.info("assigned partitions=%s", _names(partitions))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # This runs inside consume(), so no batch is half done; make the async commits of what
        # was delivered certain before another consumer takes these partitions.
        self.metrics.rebalances.labels(kind="revoke").inc()
        self._complete_computing()
        self._drain()
        self.commit_delivered(partitions)
        self._forget(partitions)
        log.info("revoked partitions=%s", _names(partitions))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        self.in_flight.clear()  # not ours to commit any more
        self.computing = None
        self._forget(partitions)
        log.warning(
            "lost partitions=%s (not committed; the new owner redoes them)", _names(partitions)
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment = [tp for tp in self.assignment if (tp.topic, tp.partition) not in gone]
        for topic, part in gone:
            self.committed.pop((topic, part), None)
            self.delivered.pop((topic, part), None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(topic, str(part))
        self.health.assigned = len(self.assignment)
        self.metrics.assigned_partitions.set(len(self.assignment))

    def run(self) -> None:
        """Consume until stop(); then deliver, commit and close."""
        log.info(
            "running guarantee=%s max_batch=%d",
            "exactly-once" if self.config.exactly_once else "at-least-once",
            self.config.max_batch,
        )
        try:
            while not self.stopping:
                messages = self._next_batch()
                if messages:
                    self.handle_batch(messages)
                self._settle()
                self._update_lag()
                self.between_batches()
            self._complete_computing()
        finally:
            # After an error the batch in the model is abandoned: uncommitted, so redone.
            self.computing = None
            # Bounded, so a stop request ends within processing.shutdown_timeout_s even when the
            # broker is away; what is not acknowledged by then stays uncommitted and is redone.
            self._drain(self.config.shutdown_timeout_s)
            self.commit_delivered(self.assignment)
            self.consumer.close()
            if self._model_thread is not None:
                self._model_thread.shutdown(wait=False, cancel_futures=True)
            log.info("stopped: consumer closed, all delivered batches committed")

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Async commit result (called from consume on this thread)."""
        if err is not None:
            # The next batch's commit carries these offsets too; count it, do not stop.
            self.metrics.kafka_errors.labels(code=err.name()).inc()
            log.warning("offset commit failed: %s", err.str())
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self.committed[(tp.topic, tp.partition)] = tp.offset

    def commit_delivered(self, partitions: list[TopicPartition]) -> None:
        """Synchronously commit the delivered offsets of `partitions` (at-least-once only)."""
        if self.config.exactly_once:
            return  # offsets went with each transaction
        wanted = {(tp.topic, tp.partition) for tp in partitions}
        offsets = [
            TopicPartition(t, p, o)
            for (t, p), o in self.delivered.items()
            if (t, p) in wanted and self.committed.get((t, p)) != o
        ]
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.metrics.kafka_errors.labels(code="commit").inc()
            log.warning("final offset commit failed: %s", exc)
            return
        for tp in offsets:
            self.committed[(tp.topic, tp.partition)] = tp.offset

    def _next_batch(self) -> list[Message]:
        """Whatever is queued, up to max_batch, without waiting for a full batch.

        consume(n, timeout) blocks until n messages or the timeout: at a light load that would add
        the whole timeout to every tick's latency. So: take what is there; if nothing, wait for
        the first message, then take what arrived with it. Heavy load still gives full batches.
        """
        batch = self.config.max_batch
        messages: list[Message] = self.consumer.consume(num_messages=batch, timeout=0)
        if messages:
            return messages
        # Nothing queued: publish the batch in the model now, not after the wait below.
        self._complete_computing()
        messages = self.consumer.consume(num_messages=1, timeout=self.config.poll_timeout_s)
        if messages and batch > 1:
            messages += self.consumer.consume(num_messages=batch - 1, timeout=0)
        return messages

    # ------------------------------------------------------------ one batch

    def handle_batch(self, messages: list[Message]) -> None:
        """Prepare the batch; publish it, or (a full batch, at-least-once) hand it to the model
        thread and publish the one that was there.

        Under load the model call of batch N (the GIL released) overlaps the decoding, window
        update and publishing around it. Batches are still published, and so committed, in
        order; a batch that is not full is published at once, for latency.
        """
        started = time.perf_counter()
        good = self._drop_errors(messages)
        if not good:
            return
        # At most max_in_flight batches appended to the windows and not yet acknowledged, this
        # one included (window.history is checked at start to cover them).
        while len(self.in_flight) + (self.computing is not None) >= self.config.max_in_flight:
            if self.in_flight:
                self._settle(wait=True)
            else:
                self._complete_computing()
        prepared = self._with_redis(
            lambda: self.pipeline.prepare(good, self.config.max_message_bytes)
        )
        if prepared is None:
            return  # abandoned during a stop; the offsets stay uncommitted
        if self.config.exactly_once:
            if not self._compute(prepared):
                return
            result = self.pipeline.finish(prepared)
            try:
                self._publish_transaction(result, _next_offsets(good))
            except (DeliveryError, KafkaException) as exc:
                self._recover(exc, good)
                return
            self._record(result, good, started)
            return

        previous, self.computing = self.computing, None
        if previous is not None and not self._await(previous):
            return  # a stop abandoned the previous batch: this one must not be committed past it
        if (
            self._model_thread is not None
            and len(messages) >= self.config.max_batch
            and prepared.misses
        ):
            self.computing = _Computing(
                good, prepared, self._model_thread.submit(self._compute_and_fill, prepared), started
            )
        if previous is not None:
            self._publish_prepared(previous.messages, previous.prepared, previous.started)
        if self.computing is None and self._compute(prepared):
            self._publish_prepared(good, prepared, started)

    def _compute_and_fill(self, prepared: Prepared) -> None:
        """On the model thread. A failed fill is retried by the loop (`_await`)."""
        self.pipeline.compute(prepared)
        self.pipeline.fill(prepared)

    def _compute(self, prepared: Prepared) -> bool:
        """On the loop's thread: the model call, then the fill; False if a stop abandoned it."""
        self.pipeline.compute(prepared)
        return self._fill(prepared)

    def _fill(self, prepared: Prepared) -> bool:
        def fill() -> bool:
            self.pipeline.fill(prepared)
            return True

        return self._with_redis(fill) is not None

    def _await(self, batch: _Computing) -> bool:
        """Wait for the model thread's work on `batch`; False if a stop abandoned it."""
        # A StoreUnavailable comes from the fill, after the model call: the fill is retried here.
        with contextlib.suppress(StoreUnavailable):
            batch.future.result()
        return self._fill(batch.prepared)

    def _complete_computing(self) -> None:
        """Publish the batch on the model thread, if any, once its work is done."""
        batch, self.computing = self.computing, None
        if batch is not None and self._await(batch):
            self._publish_prepared(batch.messages, batch.prepared, batch.started)

    def _publish(self, batch: _InFlight) -> None:
        t0 = time.perf_counter()
        # Counted before producing: delivery reports are served only by poll(), below, so none
        # can arrive first; and a pending count is what keeps the batch from being committed.
        self._produce_output(batch.result, batch.latch)
        self.in_flight.append(batch)
        self.producer.poll(0)
        self.metrics.batch_seconds.labels(stage="produce").observe(time.perf_counter() - t0)

    def _publish_prepared(
        self, messages: list[Message], prepared: Prepared, started: float
    ) -> None:
        self._publish(_InFlight(messages, self.pipeline.finish(prepared), started))

    def _produce_output(self, result: BatchResultLike, latch: DeliveryLatch) -> None:
        """Produce a batch's forecasts and dead letters, each counted on `latch`."""
        latch.sent(len(result.forecasts) + len(result.dead_letters))
        for f in result.forecasts:
            produce(
                self.producer,
                self.config.forecasts_topic,
                f.symbol.encode(),
                encode_forecast(f),
                forecast_headers(f),
                latch.on_delivery,
            )
        for r in result.dead_letters:
            produce(
                self.producer,
                self.config.dead_letter_topic,
                r.key,
                r.value,
                dead_letter_headers(r),
                latch.on_delivery,
            )

    def _settle(self, wait: bool = False) -> None:
        """Serve delivery reports; commit, in order, every batch that is wholly acknowledged."""
        self.producer.poll(0.01 if wait else 0)
        while self.in_flight and self.in_flight[0].latch.pending == 0:
            batch = self.in_flight.popleft()
            if batch.latch.error is not None:
                # Every batch after it is redone too, the one in the model included: none may
                # be committed past the failed one.
                failed = [m for b in [batch, *self.in_flight] for m in b.messages]
                self.in_flight.clear()
                if self.computing is not None:
                    failed += self.computing.messages
                    self.computing = None
                self._recover(
                    DeliveryError(
                        f"delivery failed: {batch.latch.error.name()} ({batch.latch.error.str()})"
                    ),
                    failed,
                )
                return
            for tp in batch.offsets:
                self.delivered[(tp.topic, tp.partition)] = tp.offset
            self._uncommitted += len(batch.messages)
            self._record(batch.result, batch.messages, batch.started)
        self._commit_if_due()

    def _commit_if_due(self) -> None:
        """Commit the delivered offsets every commit_interval_s, or sooner after max_batch ticks.

        Each commit is a write to the broker's offsets topic; one per small batch (hundreds a
        second at a light, steady load) cost the broker more CPU than the ticks themselves.
        """
        if not self._uncommitted:
            return
        now = time.monotonic()
        if (
            now - self._last_commit < self.config.commit_interval_s
            and self._uncommitted < self.config.max_batch
        ):
            return
        t0 = time.perf_counter()
        offsets = [TopicPartition(t, p, o) for (t, p), o in self.delivered.items()]
        self.consumer.commit(offsets=offsets, asynchronous=True)
        self._uncommitted = 0
        self._last_commit = now
        self.metrics.batch_seconds.labels(stage="commit").observe(time.perf_counter() - t0)

    def _drain(self, timeout_s: float | None = None) -> None:
        """Wait (up to `timeout_s`, default the delivery timeout) for every in-flight batch's
        delivery reports, and commit what was delivered."""
        if self.in_flight:
            self.producer.flush(self.config.delivery_timeout_s if timeout_s is None else timeout_s)
            self._settle()
        if self.in_flight:
            log.warning(
                "%d batches not acknowledged in time; left uncommitted", len(self.in_flight)
            )
            self.in_flight.clear()

    def _drop_errors(self, messages: list[Message]) -> list[Message]:
        good = []
        for m in messages:
            err = m.error()
            if err is None:
                good.append(m)
                continue
            if err.code() == KafkaError._PARTITION_EOF:
                continue
            self.metrics.kafka_errors.labels(code=err.name()).inc()
            log.warning("consume error=%s detail=%s", err.name(), err.str())
            if err.fatal():
                raise KafkaException(err)
        return good

    def _with_redis(self, step: Callable[[], T]) -> T | None:
        """Run a step that needs Redis, retrying with capped backoff while Redis is unavailable;
        None if a stop request came meanwhile (the batch is abandoned, uncommitted)."""
        delay = 0.05
        while True:
            try:
                result = step()
            except StoreUnavailable as exc:
                self.metrics.redis_errors.inc()
                self.health.redis_ok = False
                if self.stopping:
                    log.warning("redis unavailable while stopping; batch left uncommitted")
                    return None
                log.warning("redis unavailable, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.config.redis_retry_max_s)
                continue
            if not self.health.redis_ok:
                log.info("redis reachable again; resuming")
            self.health.redis_ok = True
            return result

    def _publish_transaction(self, result: BatchResultLike, offsets: list[TopicPartition]) -> None:
        """Exactly-once: the batch's output and its input offsets in one transaction."""
        produce_started = time.perf_counter()
        self.producer.begin_transaction()
        self._produce_output(result, self.latch)
        commit_started = time.perf_counter()
        self.producer.send_offsets_to_transaction(
            offsets, self.consumer.consumer_group_metadata(), self.config.delivery_timeout_s
        )
        self.producer.commit_transaction(self.config.delivery_timeout_s)
        self.latch.raise_if_failed()
        done = time.perf_counter()
        for tp in offsets:
            self.delivered[(tp.topic, tp.partition)] = tp.offset
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.metrics.batch_seconds.labels(stage="produce").observe(commit_started - produce_started)
        self.metrics.batch_seconds.labels(stage="commit").observe(done - commit_started)

    def _recover(self, exc: Exception, messages: list[Message]) -> None:
        """Undo a failed publish: abort the transaction; rewind to the first offsets of `messages`."""
        self.metrics.kafka_errors.labels(code=type(exc).__name__).inc()
        if isinstance(exc, KafkaException) and exc.args and exc.args[0].fatal():
            raise exc
        log.warning("publish failed, rewinding the batch: %s", exc)
        if self.config.exactly_once:
            try:
                self.producer.abort_transaction(self.config.delivery_timeout_s)
            except KafkaException as abort_exc:
                if abort_exc.args and abort_exc.args[0].fatal():
                    raise
        self.latch.reset()
        for tp in _first_offsets(messages):
            try:
                self.consumer.seek(tp)
            except KafkaException as seek_exc:
                log.warning("seek %s failed: %s", tp, seek_exc)
        time.sleep(0.5)

    def _record(self, result: BatchResultLike, messages: list[Message], started: float) -> None:
        m = self.metrics
        for outcome, n in result.counts.items():
            if n:
                m.ticks.labels(outcome=outcome).inc(n)
        cached = sum(1 for f in result.forecasts if f.cached)
        if cached:
            m.forecasts.labels(cached="true").inc(cached)
        if len(result.forecasts) - cached:
            m.forecasts.labels(cached="false").inc(len(result.forecasts) - cached)
        if result.cache_hits:
            m.cache_requests.labels(result="hit").inc(result.cache_hits)
        if result.cache_misses:
            m.cache_requests.labels(result="miss").inc(result.cache_misses)
        for r in result.dead_letters:
            m.dead_letters.labels(reason=r.reason).inc()
        if result.non_finite:
            m.forecasts_dropped.labels(reason="non_finite").inc(result.non_finite)
        if result.inference_batch_size:
            m.inference_batch_size.observe(result.inference_batch_size)
            m.inference_seconds.observe(result.stage_seconds.get("inference", 0.0))
        for stage, seconds in result.stage_seconds.items():
            m.batch_seconds.labels(stage=stage).observe(seconds)
        m.batch_seconds.labels(stage="total").observe(time.perf_counter() - started)
        m.batches.inc()
        if result.forecasts:
            # Ingest-to-publish, from the tick's Kafka timestamp to now (all delivered).
            now_ms = self.wall_clock() * 1000.0
            stamps = {(msg.partition(), msg.offset()): msg.timestamp()[1] for msg in messages}
            sent = np.fromiter(
                (stamps.get((f.source.partition, f.source.offset), 0) for f in result.forecasts),
                dtype=np.float64,
                count=len(result.forecasts),
            )
            sent = sent[sent > 0]
            m.tick_to_forecast_seconds.observe_many(np.maximum(now_ms - sent, 0.0) / 1000.0)

    def _update_lag(self) -> None:
        """Refresh the lag gauge, at most once a second (watermarks come from fetch responses)."""
        now = time.monotonic()
        if not self.assignment or now - self._last_lag_update < 1.0:
            return
        self._last_lag_update = now
        for (topic, part), lag in committed_lag(
            self.consumer, self.assignment, self.committed
        ).items():
            self.metrics.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)


def _position(m: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a consumed message, which always has all three."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset


def _next_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    top: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = _position(m)
        top[(topic, partition)] = max(top.get((topic, partition), -1), offset)
    return [TopicPartition(t, p, o + 1) for (t, p), o in top.items()]


def _first_offsets(messages: Sequence[Message]) -> list[TopicPartition]:
    first: dict[tuple[str, int], int] = {}
    for m in messages:
        topic, partition, offset = _position(m)
        first.setdefault((topic, partition), offset)
    return [TopicPartition(t, p, o) for (t, p), o in first.items()]


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "-"

"""The commit order of tickcast, written down once: the Checkpoint owns the offsets of the batches
in flight, their delivery reports, and when (and whether) their input offsets are committed.

A batch enters with `open(records)` before any of its work is done, so the checkpoint knows every
batch the loop holds, in order, from the first Redis call to the commit. Then:

At-least-once (`AtLeastOnce`), after quix-streams' checkpointing:
    1. `publish`: produce the batch's forecasts and dead letters; its latch counts them.
    2. `settle`: serve delivery reports; every batch, oldest first, that is wholly acknowledged
       becomes delivered (its offsets are due to commit); a batch that is not stops the walk, so
       nothing is ever committed past a batch that is not delivered.
    3. Delivered offsets are committed asynchronously every `commit_interval_s` (or after
       `max_batch` delivered ticks); offsets are cumulative, so a lost async commit is superseded
       by the next. Revoke and close commit synchronously.
    A delivery failure rewinds: the consumer seeks back to the first offsets of the failed batch
    and of every batch opened after it, all of which are dropped (`Batch.dropped`); the window
    store and the cache make their repeat identical.

Exactly-once (`Transactional`), linear as in confluent-kafka's `examples/eos_transactions.py`:
    begin -> produce -> send the input offsets to the transaction -> commit. An abortable error
    aborts and rewinds to the batch's first offsets; a fatal one (the producer fenced or broken)
    renews the producer and rewinds to the group's committed offsets; the process goes on.

Rebalance: `revoke` finishes what can be finished (deliver, commit synchronously) and forgets the
partitions; `lost` drops their batches without committing (another member owns them now).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from stream.contracts import (
    Forecast,
    Record,
    dead_letter_headers,
    encode_forecast,
    encode_score,
    forecast_headers,
    score_headers,
)
from stream.errors import KafkaFailure
from stream.kafka import DeliveryLatch, Offsets, Partition
from stream.pipeline import BatchResult
from stream.ports import SinkPort, SourcePort

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Batch:
    """One consumed batch, from `open` until it is committed or dropped."""

    records: list[Record]
    #: partition -> first offset in the batch (where a rewind reads again from)
    first: Offsets
    #: partition -> one past the last offset (what a commit of this batch writes)
    next: Offsets
    latch: DeliveryLatch = field(default_factory=DeliveryLatch)
    output: BatchResult | None = None
    #: rewound or lost: its work must not be published nor committed
    dropped: bool = False
    #: perf_counter at open, for the batch-time metric
    opened_at: float = field(default_factory=time.perf_counter)


def open_batch(records: Sequence[Record]) -> Batch:
    first: Offsets = {}
    nxt: Offsets = {}
    for r in records:  # a partition's records come in offset order
        key = (r.topic, r.partition)
        if key not in first:
            first[key] = r.offset
        nxt[key] = r.offset + 1
    return Batch(list(records), first, nxt)


@dataclass(frozen=True)
class Topics:
    forecasts: str
    dead_letter: str
    #: live scores (topics.scores); empty: not published
    scores: str = ""
    #: the challenger's forecasts (topics.shadow); empty: only scored
    shadow: str = ""


class Checkpoint(ABC):
    """The batches in flight and the commit order; see the module docstring."""

    def __init__(self, source: SourcePort, sink: SinkPort, topics: Topics) -> None:
        self.source = source
        self.sink = sink
        self.topics = topics
        #: opened, not yet done or dropped, oldest first
        self.open: deque[Batch] = deque()
        #: partition -> next offset the group has committed (as far as this member knows)
        self.committed: Offsets = {}
        #: count of rewinds, for tests and metrics
        self.rewinds = 0
        #: (stage, seconds) of the produce and commit steps, for the batch-time metric
        self.observe: Callable[[str, float], None] = lambda stage, seconds: None
        #: monotonic time by which a requested stop must be over (inf: no stop requested)
        self.stop_deadline = math.inf
        #: a forecast's wire form: JSON, or a registry format's (stream/formats.py)
        self.encode_forecast: Callable[[Forecast], bytes] = encode_forecast

    # ------------------------------------------------------------ the batch's life

    def open_batch(self, records: Sequence[Record]) -> Batch:
        batch = open_batch(records)
        self.open.append(batch)
        return batch

    @abstractmethod
    def publish(self, batch: Batch, output: BatchResult) -> None:
        """Hand a computed batch's output to Kafka (the batch must be the oldest unpublished)."""

    @abstractmethod
    def settle(self, wait: bool = False) -> list[Batch]:
        """Serve delivery reports and commit what is due; the batches done since the last call."""

    @property
    def in_flight(self) -> int:
        return len(self.open)

    def stop_by(self, deadline: float) -> None:
        """A stop was requested: no Kafka call may outlast `deadline` (monotonic)."""
        self.stop_deadline = deadline
        self.sink.stop_by(deadline)

    def _within(self, call: Callable[[float], bool], timeout_s: float) -> bool:
        """Call `call(slice_s)` until it returns True, in slices of at most a second, for up to
        `timeout_s` and never past the stop deadline; False if the time ran out. A blocking
        librdkafka call cannot be interrupted by a signal, so it is only ever given a slice."""
        deadline = time.monotonic() + timeout_s
        while True:
            # Re-read each time: a stop may be requested while this waits.
            left = min(deadline, self.stop_deadline) - time.monotonic()
            if left <= 0:
                return False
            if call(min(1.0, left)):
                return True

    # ------------------------------------------------------------ rebalance and stop

    def assigned(self, committed: Mapping[Partition, int]) -> None:
        self.committed.update(committed)

    def revoke(self, partitions: list[Partition], timeout_s: float) -> None:
        """Deliver and commit what can be within `timeout_s`, then forget `partitions`."""
        self.finish(timeout_s)
        self._forget(partitions)

    def lost(self, partitions: list[Partition]) -> None:
        """Drop every batch without committing: another member redoes them."""
        for batch in self.open:
            batch.dropped = True
        self.open.clear()
        self._forget(partitions)

    def close(self, timeout_s: float) -> bool:
        """Deliver and commit what can be within `timeout_s`, then drop what the producer still
        holds; True if nothing was left undone."""
        complete = self.finish(timeout_s)
        self.sink.close()
        return complete

    @abstractmethod
    def finish(self, timeout_s: float) -> bool:
        """Deliver and commit every published batch within `timeout_s`; drop the rest."""

    def _forget(self, partitions: list[Partition]) -> None:
        for p in partitions:
            self.committed.pop(p, None)

    # ------------------------------------------------------------ shared steps

    def _produce(self, batch: Batch, output: BatchResult) -> None:
        """Produce a batch's forecasts, the challenger's (to its own topic, never the main
        one), scores and dead letters, each counted on its latch."""
        latch = batch.latch
        sink = self.sink
        topic = self.topics.forecasts
        encode = self.encode_forecast
        scores = output.scores if self.topics.scores else []
        shadow = output.shadow if self.topics.shadow else []
        latch.sent(len(output.forecasts) + len(shadow) + len(scores) + len(output.dead_letters))
        for f in output.forecasts:
            sink.produce(
                topic, f.symbol.encode(), encode(f), forecast_headers(f), latch.on_delivery
            )
        for f in shadow:
            sink.produce(
                self.topics.shadow,
                f.symbol.encode(),
                encode(f),
                forecast_headers(f),
                latch.on_delivery,
            )
        for s in scores:
            sink.produce(
                self.topics.scores,
                s.symbol.encode(),
                encode_score(s),
                score_headers(s),
                latch.on_delivery,
            )
        for r in output.dead_letters:
            try:
                sink.produce(
                    self.topics.dead_letter,
                    r.key,
                    r.value,
                    dead_letter_headers(r),
                    latch.on_dead_letter,
                )
            except KafkaFailure as exc:
                if exc.retriable or exc.fatal:
                    raise
                # The client itself refuses it (over its message.max.bytes): it never will take it.
                what = f"source-offset={r.offset} error={exc.code}"
                latch.unsent(what)
                log.error(
                    'dead letter not deliverable, skipped reason=%s partition="%s[%d]" offset=%d: %s',
                    r.reason,
                    r.topic,
                    r.partition,
                    r.offset,
                    exc,
                )

    def _rewind(self, batches: Sequence[Batch], why: str) -> None:
        """Drop `batches` and read their records again from their first offsets."""
        start: Offsets = {}
        for batch in batches:
            batch.dropped = True
            for p, o in batch.first.items():
                start.setdefault(p, o)
        self._seek(start, why)

    def _seek(self, start: Offsets, why: str) -> None:
        self.rewinds += 1
        log.warning(
            "rewinding to %s: %s",
            ",".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(start.items())) or "-",
            why,
        )
        self.source.seek(start)


#: an asynchronous commit without a reply for this long is taken as lost; the next one is sent
COMMIT_REPLY_WAIT_S = 5.0
#: the longest a call in a fatal error's repair may block (a signal waits for it)
REPAIR_CALL_S = 2.0


class AtLeastOnce(Checkpoint):
    def __init__(
        self,
        source: SourcePort,
        sink: SinkPort,
        topics: Topics,
        *,
        commit_interval_s: float = 0.1,
        commit_after: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(source, sink, topics)
        self.commit_interval_s = commit_interval_s
        self.commit_after = commit_after
        self.clock = clock
        #: partition -> next offset whose output is delivered (committed, or due to be)
        self.delivered: Offsets = {}
        #: published batches, oldest first, awaiting delivery reports
        self._published: deque[Batch] = deque()
        self._uncommitted = 0
        self._last_commit = clock()
        self._done: list[Batch] = []
        self._commit_in_flight = False
        source.on_commit = self._committed_async

    def publish(self, batch: Batch, output: BatchResult) -> None:
        if batch.dropped:
            return
        batch.output = output
        started = time.perf_counter()
        try:
            self._produce(batch, output)
        except KafkaFailure as exc:
            if self.stop_deadline < math.inf and not exc.fatal:
                # Stopping with the producer's queue still full: the batch is left uncommitted
                # (redone by the next run, its queued part purged at close).
                log.warning("batch not published before the stop deadline: %s", exc)
                return
            # A fatal error of the idempotent producer (it refuses every message from then on):
            # a new producer, and every batch not yet delivered is read again.
            if not exc.fatal:
                raise
            log.error("producer failed fatally, replacing it: %s", exc)
            self.sink.renew()
            failed = list(self.open)
            self.open.clear()
            self._published.clear()
            self._rewind(failed, str(exc))
            return
        self._published.append(batch)
        self.sink.poll(0)
        self.observe("produce", time.perf_counter() - started)

    def settle(self, wait: bool = False) -> list[Batch]:
        self.sink.poll(0.01 if wait else 0.0)
        self._take_acknowledged()
        self._commit_if_due()
        done, self._done = self._done, []
        return done

    def _take_acknowledged(self) -> None:
        """Oldest first, every wholly acknowledged batch becomes delivered; a failed one rewinds."""
        while self._published and self._published[0].latch.pending == 0:
            batch = self._published.popleft()
            if batch.latch.error is not None:
                # Every batch after it is redone too: none may be committed past the failed one.
                failed = list(self.open)
                self.open.clear()
                self._published.clear()
                self._rewind(failed, f"delivery failed: {batch.latch.error}")
                return
            for what in batch.latch.undeliverable:
                log.error("dead letter refused for good, skipped %s", what)
            self.open.remove(batch)
            self.delivered.update(batch.next)
            self._uncommitted += len(batch.records)
            self._done.append(batch)

    def _commit_if_due(self) -> None:
        """Commit the delivered offsets every commit_interval_s, or sooner after commit_after
        ticks, with at most one commit in flight. Each commit is a write to the broker's offsets
        topic; one per small batch (hundreds a second at a light load) cost the broker more CPU
        than the ticks themselves, and with one-tick batches the queue of commit requests held
        the group's heartbeats back until the session timed out (the partitions were lost)."""
        # Due while anything delivered is not known committed: a commit that failed, or whose
        # reply never came, is sent again even when no new ticks arrive.
        due = {p: o for p, o in self.delivered.items() if self.committed.get(p) != o}
        if not due:
            return
        now = self.clock()
        if now - self._last_commit < self.commit_interval_s and (
            self._uncommitted < self.commit_after or self._commit_in_flight
        ):
            return
        if self._commit_in_flight and now - self._last_commit < COMMIT_REPLY_WAIT_S:
            return  # the next commit carries these offsets too
        started = time.perf_counter()
        self._commit_in_flight = True  # before: a reply may come within the call
        self.source.commit(due, asynchronous=True)
        self.observe("commit", time.perf_counter() - started)
        self._uncommitted = 0
        self._last_commit = now

    def _committed_async(self, offsets: Offsets, error: str | None) -> None:
        self._commit_in_flight = False
        if error is not None:
            # The next commit carries these offsets too; do not stop.
            log.warning("offset commit failed: %s", error)
            return
        for p, o in offsets.items():
            if p in self.delivered:
                self.committed[p] = max(o, self.committed.get(p, -1))

    def finish(self, timeout_s: float) -> bool:
        if self._published:
            self._within(lambda t: self.sink.flush(t) == 0, timeout_s)
            self.sink.poll(0)  # the reports that arrived, even with no time left to wait
        self._take_acknowledged()
        complete = not self._published and not self.open
        if not complete:
            log.warning(
                "%d batches not acknowledged in %.1f s; left uncommitted (they will be redone)",
                len(self.open),
                timeout_s,
            )
            for batch in self.open:
                batch.dropped = True
            self.open.clear()
            self._published.clear()
        return self._commit_now(timeout_s) and complete

    def _commit_now(self, timeout_s: float) -> bool:
        due = {p: o for p, o in self.delivered.items() if self.committed.get(p) != o}
        if not due:
            return True
        if self.stop_deadline < math.inf:
            # Stopping: a synchronous commit has no timeout (it waited for the coordinator for
            # seconds past the deadline with the broker gone), so commit asynchronously and serve
            # its reply within what is left of the deadline.
            self._commit_in_flight = True
            self.source.commit(due, asynchronous=True)

            def replied(t: float) -> bool:
                self.source.serve(t)
                return all(self.committed.get(p) == o for p, o in due.items())

            if self._within(replied, timeout_s):
                return True
            log.warning("offset commit not confirmed before the stop deadline; redone after")
            return False
        try:
            self.source.commit(due, asynchronous=False)
        except KafkaFailure as exc:
            log.warning("offset commit failed: %s", exc)
            return False
        self.committed.update(due)
        self._uncommitted = 0
        return True

    def _forget(self, partitions: list[Partition]) -> None:
        super()._forget(partitions)
        for p in partitions:
            self.delivered.pop(p, None)

    def lost(self, partitions: list[Partition]) -> None:
        self._published.clear()
        super().lost(partitions)


class Transactional(Checkpoint):
    def __init__(
        self, source: SourcePort, sink: SinkPort, topics: Topics, *, timeout_s: float = 30.0
    ) -> None:
        super().__init__(source, sink, topics)
        self.timeout_s = timeout_s
        self._done: list[Batch] = []
        #: after a fatal error: the producer still to be replaced, and the partitions still to be
        #: rewound to the group's committed offsets (both retried before the next transaction)
        self._renew = False
        self._rewind_to_committed: dict[Partition, int] = {}
        #: a failed batch has not been redone by a committed transaction yet
        self._redo_pending = False

    def publish(self, batch: Batch, output: BatchResult) -> None:
        """The batch's output and its input offsets in one transaction, committed before the next
        batch is consumed. On failure the batch (and any opened after it) is dropped and rewound."""
        if batch.dropped:
            return
        if self._renew or self._rewind_to_committed:
            # Consumed before the rewind a fatal error needs: redone after it, never published.
            self._hold_back(self._drop_open())
            self._repair()
            return
        batch.output = output
        started = time.perf_counter()
        try:
            self.sink.begin()
            self._produce(batch, output)
            produced = time.perf_counter()
            # commit_transaction flushes too; flushing first lets a delivery error abort the
            # transaction here instead of surfacing as a commit error.
            if not self._within(lambda t: self.sink.flush(t) == 0, self.timeout_s):
                raise KafkaFailure("delivery timed out", "timed_out", abortable=True)
            if batch.latch.error is not None:
                raise KafkaFailure(
                    f"delivery failed: {batch.latch.error}", "delivery", abortable=True
                )
            metadata = self.source.group_metadata()
            if not self._within(
                lambda t: _retrying(lambda: self.sink.send_offsets(batch.next, metadata, t)),
                self.timeout_s,
            ) or not self._within(lambda t: _retrying(lambda: self.sink.commit(t)), self.timeout_s):
                raise KafkaFailure("transaction commit timed out", "timed_out", abortable=True)
        except KafkaFailure as exc:
            self._recover(exc)
            return
        self.observe("produce", produced - started)
        self.observe("commit", time.perf_counter() - produced)
        self.open.remove(batch)
        self.committed.update(batch.next)
        self._redo_pending = False
        self._done.append(batch)

    def _drop_open(self) -> list[Batch]:
        failed = list(self.open)
        self.open.clear()
        for batch in failed:
            batch.dropped = True
        return failed

    def _recover(self, exc: KafkaFailure) -> None:
        failed = self._drop_open()
        self._redo_pending = True
        if not exc.fatal:
            # In slices, like every other call here: with the broker gone the abort waits for
            # its whole timeout, and a SIGTERM's handler cannot run before the call returns.
            try:
                aborted = self._within(
                    lambda t: _retrying(lambda: self.sink.abort(t)), self.timeout_s
                )
            except KafkaFailure as abort_exc:
                # An abort that fails (INVALID_TXN_STATE after a broker restart) leaves the
                # transaction's state unknown: the producer is replaced like a fatal one.
                exc = abort_exc
                exc.fatal = True
            else:
                if not aborted:
                    exc = KafkaFailure(
                        f"abort transaction timed out after: {exc}", "_TIMED_OUT", fatal=True
                    )
        if not exc.fatal:
            self._rewind(failed, str(exc))
            return
        # The producer cannot be used again: a new one (init_transactions fences and aborts what
        # the old one left open), and the consumer back to what the group committed, since the
        # failed commit may or may not have happened. Both need the broker: done before the next
        # transaction, retried until they succeed (or the stop, which leaves them to the restart).
        log.error("producer failed fatally, replacing it: %s", exc)
        self._renew = True
        self._hold_back(failed)
        self._repair()

    def _hold_back(self, dropped: list[Batch]) -> None:
        """Dropped batches wait for the repair: their partitions are rewound to the group's
        committed offsets once it is done (the earliest first offset is kept meanwhile)."""
        self._redo_pending = True
        for b in dropped:
            for p, o in b.first.items():
                self._rewind_to_committed.setdefault(p, o)

    def _repair(self) -> None:
        """Finish the recovery from a fatal error: renew the producer, rewind to the committed
        offsets. While the broker cannot be reached it is retried before the next batch."""
        if self.stop_deadline < math.inf:
            return  # stopping: the restart's init_transactions fences what is left open
        try:
            # Short calls: a stop that comes meanwhile must not wait for init_transactions' 30 s
            # (or a committed-offsets lookup's 10 s); what times out is tried again before the
            # next batch.
            if self._renew:
                self.sink.renew(REPAIR_CALL_S)
                self._renew = False
            parts = sorted(self._rewind_to_committed)
            committed = self.source.committed(parts, REPAIR_CALL_S) if parts else {}
        except KafkaFailure as exc:
            # Meanwhile read the same span again rather than run ahead of the committed offsets
            # (further than window.history could serve when the rewind finally comes).
            log.warning("producer recovery deferred: %s", exc)
            self.source.seek(dict(self._rewind_to_committed))
            return
        self.committed.update(committed)
        start = {p: committed.get(p, o) for p, o in self._rewind_to_committed.items()}
        self._rewind_to_committed = {}
        self._seek(start, "after a fatal producer error")

    def settle(self, wait: bool = False) -> list[Batch]:
        self.sink.poll(0)
        done, self._done = self._done, []
        return done

    def _forget(self, partitions: list[Partition]) -> None:
        super()._forget(partitions)
        for p in partitions:
            self._rewind_to_committed.pop(p, None)

    def finish(self, timeout_s: float) -> bool:
        # Each batch's transaction commits in `publish`; an opened batch that never got there is
        # simply not committed (it will be redone).
        complete = not self.open and not self._redo_pending
        for batch in self.open:
            batch.dropped = True
        self.open.clear()
        return complete


def _retrying(call: Callable[[], None]) -> bool:
    """True if `call` succeeded; False if it timed out in a way librdkafka says to retry (the same
    call resumes the operation); any other failure is raised."""
    try:
        call()
    except KafkaFailure as exc:
        if exc.retriable and not exc.abortable and not exc.fatal:
            return False
        raise
    return True

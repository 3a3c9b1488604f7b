"""Review of the loop (stream/runner.py) with the checkpoint: failure timelines at the edges,
driven with the fakes of tests/fakes.py. Several once failed on bugs found in review; they hold
the fixes."""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError

from stream.contracts import Tick
from stream.errors import KafkaFailure
from stream.windows import WindowBatch
from tests.fakes import FakeSink, FakeStore, Produced
from tests.unit.test_runner import EXPECTED, T, forecasts, make, per_symbol, run_to_end

FATAL = KafkaFailure("commit transaction: _FENCED", "_FENCED", fatal=True)


class RenewFailsSink(FakeSink):
    """The transaction coordinator does not answer for the first `renew_failures` renewals."""

    def __init__(self, renew_failures: int) -> None:
        super().__init__()
        self.renew_failures = renew_failures

    def renew(self, init_timeout_s: float | None = None) -> None:
        if self.renew_failures:
            self.renew_failures -= 1
            raise KafkaFailure("init transactions: _TIMED_OUT", "_TIMED_OUT", retriable=True)
        super().renew()


class BoundedStore(FakeStore):
    """A window store whose replay history, like the real one, is bounded: a redelivered tick
    more than `history` offsets below the partition's last applied one is `too_old` (counted and
    skipped, no window)."""

    def __init__(self, history: int) -> None:
        super().__init__()
        self.history = history
        self.top: dict[int, int] = {}
        self.too_old: list[tuple[int, int]] = []

    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatch:
        kept = []
        for t in ticks:
            top = self.top.get(t.partition, -1)
            if t.offset <= top - self.history:
                self.too_old.append((t.partition, t.offset))
                continue
            kept.append(t)
        for t in kept:
            self.top[t.partition] = max(self.top.get(t.partition, -1), t.offset)
        return super().append_batch(kept)


# ------------------------------------------------------------------ exactly-once


def test_exactly_once_loses_no_forecast_when_the_producer_renewal_fails_once() -> None:
    sink = RenewFailsSink(renew_failures=1)
    # Batches of 20: p0 0-19, then p0 20-22 with p1 0-16, then p1 17-22.
    runner, source, sink, _, _ = make(exactly_once=True, sink=sink, max_batch=20)

    def fail_first_transaction(turn: int) -> None:
        if turn == 1:  # after the assignment, before the first batch
            sink.transaction_error = FATAL

    assert run_to_end(runner, source, fail_first_transaction) is True
    got = per_symbol(forecasts(sink.committed_output))
    assert got["A"] == EXPECTED["A"]
    assert got["B"] == EXPECTED["B"], f"missing: {sorted(set(EXPECTED['B']) - set(got['B']))}"


def test_exactly_once_does_not_run_ahead_of_the_committed_offsets_while_repair_waits() -> None:
    # history as the config requires it: max_batch x (max_in_flight + 1) = 4 x 3
    store = BoundedStore(history=12)
    sink = RenewFailsSink(renew_failures=4)  # four batches' time without the coordinator
    runner, source, sink, _, _ = make(exactly_once=True, sink=sink, store=store, max_batch=4)

    def fail_first_transaction(turn: int) -> None:
        if turn == 1:
            sink.transaction_error = FATAL

    assert run_to_end(runner, source, fail_first_transaction) is True
    got = per_symbol(forecasts(sink.committed_output))
    assert store.too_old == []
    assert got == EXPECTED


def test_exactly_once_survives_a_fatal_error_on_every_other_batch() -> None:
    # Pins the promise under repeated faults (repair not deferred): each forecast exactly once.
    runner, source, sink, checkpoint, _ = make(exactly_once=True, max_batch=3)

    def fail_often(turn: int) -> None:
        if turn % 2 == 0:
            sink.transaction_error = KafkaFailure(
                "x", "E", fatal=turn % 4 == 0, abortable=turn % 4 != 0
            )

    assert run_to_end(runner, source, fail_often) is True
    assert checkpoint.rewinds > 3
    assert per_symbol(forecasts(sink.committed_output)) == EXPECTED


# ------------------------------------------------------------------ at-least-once


class FatalProducerSink(FakeSink):
    """An idempotent producer that hit a fatal error (e.g. OUT_OF_ORDER_SEQUENCE_NUMBER after a
    broker restart): every produce raises _FATAL until the producer is replaced."""

    def __init__(self, fail_at: bytes) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.broken = False

    def produce(self, topic, key, value, headers=None, on_delivery=None):  # type: ignore[no-untyped-def]
        if not self.broken and self.renewals == 0 and value and self.fail_at in value:
            self.broken = True
        if self.broken:
            raise KafkaFailure("produce to forecasts: _FATAL", "_FATAL", fatal=True)
        super().produce(topic, key, value, headers, on_delivery)

    def renew(self, init_timeout_s: float | None = None) -> None:
        super().renew()
        self.broken = False


def test_at_least_once_survives_a_fatal_producer_error() -> None:
    sink = FatalProducerSink(fail_at=b'"ts":1010')
    runner, source, sink, checkpoint, _ = make(sink=sink)
    assert run_to_end(runner, source) is True
    assert sink.renewals == 1 and checkpoint.rewinds == 1
    got = per_symbol(forecasts(sink.delivered))
    assert sorted(set(got["A"])) == EXPECTED["A"] and sorted(set(got["B"])) == EXPECTED["B"]


class CountingStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[int, int]]] = []

    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatch:
        self.batches.append([(t.partition, t.offset) for t in ticks])
        return super().append_batch(ticks)


def test_a_batch_dropped_while_waiting_for_room_is_not_applied_to_the_windows() -> None:
    sink = FakeSink(auto=False)
    store = CountingStore()
    runner, source, sink, checkpoint, _ = make(sink=sink, store=store, max_batch=4)
    runner._model_thread = None  # every batch computed on the loop's thread
    failed: list[Produced] = []

    def fail_first_batch(m: Produced) -> bool:
        hit = b'"ts":1002' in (m.value or b"") and not failed
        if hit:
            failed.append(m)
        return hit

    sink.fail(fail_first_batch, KafkaError._MSG_TIMED_OUT)
    waited = [0]

    def settle(wait: bool = False) -> list:  # type: ignore[type-arg]
        if wait:
            waited[0] += 1
            sink.ack()  # the reports come while the loop waits for room
        return type(checkpoint).settle(checkpoint, wait)

    checkpoint.settle = settle  # type: ignore[method-assign]

    def stop_after_the_rewind(turn: int) -> None:
        if checkpoint.rewinds:
            runner.stop()

    run_to_end(runner, source, stop_after_the_rewind)
    assert checkpoint.rewinds == 1 and waited[0] >= 1
    # p0 0-3 and 4-7 were applied and published (max_in_flight 2); 8-11 was opened, waited for
    # room, and was dropped by the rewind to offset 0 while it waited: it must not be applied.
    assert store.batches == [[(0, o) for o in range(4)], [(0, o) for o in range(4, 8)]]


def test_a_rewind_while_a_batch_is_on_the_model_thread_drops_it_and_commits_nothing_past() -> None:
    # Full batches go to the model thread. The first batch's delivery fails while a later one is
    # being computed: that one is dropped with it (never published before its redo), nothing is
    # committed past the failed batch, and every window is delivered in the end.
    sink = FakeSink(auto=False)
    runner, source, sink, checkpoint, _ = make(sink=sink, max_batch=4, commit_interval_s=0.0)
    failed: list[Produced] = []

    def once(m: Produced) -> bool:
        hit = m.topic == "forecasts" and b'"ts":1002' in (m.value or b"") and not failed
        if hit:
            failed.append(m)
        return hit

    sink.fail(once, KafkaError._MSG_TIMED_OUT)
    in_model: list[bool] = []
    real_rewind = checkpoint._rewind

    def rewind(batches, why):  # type: ignore[no-untyped-def]
        computing = runner.computing
        in_model.append(computing is not None and computing.batch in batches)
        real_rewind(batches, why)

    checkpoint._rewind = rewind  # type: ignore[method-assign]
    source_commit = source.commit

    def never_ahead(offsets, *, asynchronous):  # type: ignore[no-untyped-def]
        delivered = set(forecasts(sink.delivered))
        for (_, part), upto in offsets.items():
            symbol = "AB"[part]
            assert {(symbol, 1_000 + o) for o in range(2, upto)} <= delivered
        source_commit(offsets, asynchronous=asynchronous)

    source.commit = never_ahead  # type: ignore[method-assign]
    assert run_to_end(runner, source, lambda turn: sink.ack()) is True
    assert in_model == [True], "the failure was meant to come while a batch was in the model"
    got = per_symbol(forecasts(sink.delivered))
    assert sorted(set(got["A"])) == EXPECTED["A"] and sorted(set(got["B"])) == EXPECTED["B"]
    assert source.group_committed == {(T, 0): 23, (T, 1): 23}

"""The commit order, with a fake consumer and producer: what is committed, when, and what a failure
rewinds. Each test is a short timeline of batches and delivery reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from stream.checkpoint import (
    REPAIR_CALL_S,
    AtLeastOnce,
    Batch,
    Topics,
    Transactional,
    open_batch,
)
from stream.contracts import Forecast, Record, Rejected, Source
from stream.errors import KafkaFailure
from stream.kafka import Partition
from stream.pipeline import BatchResult
from tests.fakes import FakeSink, FakeSource, TimingOutSink

T = "ticks"
TOPICS = Topics("forecasts", "ticks.dlq")


def records(partition: int, first: int, n: int) -> list[Record]:
    return [Record(T, partition, o, b"A", b"{}") for o in range(first, first + n)]


def output(batch_records: list[Record], dead: int = 0) -> BatchResult:
    """One forecast per record (the last `dead` records are dead letters instead)."""
    forecasts = [
        Forecast(
            "A",
            r.offset,
            1,
            1.0,
            0.9,
            1.1,
            0.8,
            1.0,
            "m",
            "h",
            False,
            Source(T, r.partition, r.offset),
            0,
        )
        for r in batch_records[: len(batch_records) - dead]
    ]
    letters = [
        Rejected("not_json", "x", r.value, r.key, T, r.partition, r.offset)
        for r in batch_records[len(batch_records) - dead :]
    ]
    return BatchResult(forecasts, letters, {})


def at_least_once(sink: FakeSink, source: FakeSource) -> AtLeastOnce:
    # commit_interval 0: every settle that delivers something commits it.
    return AtLeastOnce(source, sink, TOPICS, commit_interval_s=0.0, commit_after=1)


def publish(cp: AtLeastOnce | Transactional, recs: list[Record], dead: int = 0) -> Batch:
    batch = cp.open_batch(recs)
    cp.publish(batch, output(recs, dead))
    return batch


# ------------------------------------------------------------------ offsets of a batch


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000)), min_size=1, max_size=50))
def test_a_batch_rewinds_to_its_first_and_commits_one_past_its_last(
    pairs: list[tuple[int, int]],
) -> None:
    by_part: dict[int, list[int]] = {}
    for p, o in pairs:
        by_part.setdefault(p, []).append(o)
    recs = [Record(T, p, o, None, b"") for p, offs in by_part.items() for o in sorted(set(offs))]
    batch = open_batch(recs)
    for p, offs in by_part.items():
        assert batch.first[(T, p)] == min(offs)
        assert batch.next[(T, p)] == max(offs) + 1


# ------------------------------------------------------------------ at-least-once


def test_nothing_is_committed_before_its_delivery_report() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    publish(cp, records(0, 0, 3))
    assert cp.settle() == [] and source.commits == []
    sink.ack()
    [done] = cp.settle()
    assert source.commits == [({(T, 0): 3}, True)]
    assert done.output is not None and len(done.output.forecasts) == 3


def test_out_of_order_acknowledgements_commit_in_batch_order() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    b1 = publish(cp, records(0, 0, 2))
    b2 = publish(cp, records(0, 2, 2))
    b3 = publish(cp, records(0, 4, 2))
    sink.ack([5, 4, 3, 2])  # all of batches 3 and 2, newest first
    assert cp.settle() == [] and source.commits == []
    sink.ack([1])  # half of batch 1: still nothing
    assert cp.settle() == [] and source.commits == []
    sink.ack()
    assert cp.settle() == [b1, b2, b3]
    assert source.commits == [({(T, 0): 6}, True)]


def test_a_failed_delivery_rewinds_it_and_everything_after_it() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    b1 = publish(cp, records(0, 0, 2))
    b2 = publish(cp, records(0, 2, 2) + records(1, 0, 2))
    b3 = publish(cp, records(0, 4, 2) + records(2, 7, 1))
    b4 = cp.open_batch(records(0, 6, 1))  # on the model thread, not yet published
    sink.fail(lambda m: m.value is not None and b'"ts":3,' in m.value, KafkaError._MSG_TIMED_OUT)
    sink.ack()
    assert cp.settle() == [b1]
    assert [b.dropped for b in (b1, b2, b3, b4)] == [False, True, True, True]
    # Partition 0 from batch 2's first, 1 from batch 2's, 2 from batch 3's (none in batch 2).
    assert source.seeks == [{(T, 0): 2, (T, 1): 0, (T, 2): 7}]
    assert source.commits == [({(T, 0): 2}, True)]
    assert cp.in_flight == 0
    cp.publish(b4, output(b4.records))  # dropped: never produced
    assert sink.pending == []


def test_commits_are_spaced_by_the_interval_unless_enough_ticks_wait() -> None:
    now = [0.0]
    sink, source = FakeSink(), FakeSource()
    cp = AtLeastOnce(
        source, sink, TOPICS, commit_interval_s=1.0, commit_after=5, clock=lambda: now[0]
    )
    publish(cp, records(0, 0, 2))
    cp.settle()
    assert source.commits == []
    publish(cp, records(0, 2, 3))  # 5 delivered ticks waiting: due
    cp.settle()
    assert source.commits == [({(T, 0): 5}, True)]
    publish(cp, records(0, 5, 1))
    cp.settle()
    now[0] = 1.5
    cp.settle()
    assert source.commits[-1] == ({(T, 0): 6}, True)


def test_revoke_mid_batch_delivers_commits_synchronously_and_forgets() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    publish(cp, records(0, 0, 3))
    publish(cp, records(1, 0, 2))
    cp.revoke([(T, 0), (T, 1)], timeout_s=5)
    assert source.commits == [({(T, 0): 3, (T, 1): 2}, False)]
    assert cp.committed == {} and cp.delivered == {} and cp.in_flight == 0


def test_revoke_with_the_broker_gone_commits_only_what_was_delivered() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    publish(cp, records(0, 0, 3))
    sink.ack()
    cp.settle()
    sink.stuck = True
    later = publish(cp, records(0, 3, 3))
    cp.revoke([(T, 0)], timeout_s=0.1)
    assert later.dropped
    assert all(offsets == {(T, 0): 3} for offsets, _ in source.commits)


def test_lost_partitions_drop_their_batches_without_a_commit() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    b1 = publish(cp, records(0, 0, 3))
    cp.lost([(T, 0)])
    sink.ack()
    assert cp.settle() == [] and b1.dropped and source.commits == []


def test_shutdown_with_undelivered_work_says_so_and_commits_the_rest() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    publish(cp, records(0, 0, 2))
    sink.ack()
    cp.settle()
    sink.stuck = True
    publish(cp, records(0, 2, 2))
    assert cp.close(timeout_s=0.1) is False
    assert source.commits[-1][0] == {(T, 0): 2}


def test_a_clean_shutdown_commits_everything() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = AtLeastOnce(source, sink, TOPICS, commit_interval_s=60.0, commit_after=10**6)
    publish(cp, records(0, 0, 2))
    publish(cp, records(0, 2, 2))
    assert cp.close(timeout_s=1) is True
    assert source.commits == [({(T, 0): 4}, False)]


def test_an_opened_but_unpublished_batch_is_not_committed_at_shutdown() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = at_least_once(sink, source)
    publish(cp, records(0, 0, 2))
    cp.open_batch(records(0, 2, 2))  # a stop abandoned it while Redis was down
    assert cp.close(timeout_s=1) is False
    assert source.commits[-1][0] == {(T, 0): 2}


def test_a_dead_letter_the_broker_refuses_for_good_is_skipped_not_retried() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    sink.fail(lambda m: m.topic == "ticks.dlq", KafkaError.MSG_SIZE_TOO_LARGE)
    batch = publish(cp, records(0, 0, 3), dead=1)
    sink.ack()
    assert cp.settle() == [batch]
    assert batch.latch.undeliverable == ["source-offset=2 error=MSG_SIZE_TOO_LARGE"]
    assert source.seeks == [] and source.commits == [({(T, 0): 3}, True)]


def test_a_dead_letter_the_client_refuses_is_skipped_too() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = at_least_once(sink, source)
    sink.refuse_over = 1000
    recs = [*records(0, 0, 1), Record(T, 0, 1, b"A", b"x" * 2000)]
    batch = publish(cp, recs, dead=1)
    assert cp.settle() == [batch]
    assert batch.latch.undeliverable == ["source-offset=1 error=MSG_SIZE_TOO_LARGE"]


def test_a_forecast_delivery_failure_is_not_skipped() -> None:
    sink, source = FakeSink(auto=False), FakeSource()
    cp = at_least_once(sink, source)
    sink.fail(lambda m: m.topic == "forecasts", KafkaError.MSG_SIZE_TOO_LARGE)
    batch = publish(cp, records(0, 0, 1))
    sink.ack()
    assert cp.settle() == [] and batch.dropped and source.seeks == [{(T, 0): 0}]


# ------------------------------------------------------------------ exactly-once


def test_a_transaction_is_begin_produce_offsets_commit() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    batch = publish(cp, records(0, 0, 3))
    assert sink.calls == ["begin", "commit {('ticks', 0): 3}"]
    assert cp.settle() == [batch]
    assert len(sink.committed_output) == 3 and cp.committed == {(T, 0): 3}


def test_an_abortable_error_aborts_and_rewinds_the_batch() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    publish(cp, records(0, 0, 3))
    sink.transaction_error = KafkaFailure("x", "INVALID_TXN_STATE", abortable=True)
    batch = publish(cp, records(0, 3, 3))
    assert batch.dropped and sink.calls[-1] == "abort"
    assert source.seeks == [{(T, 0): 3}]
    assert len(sink.committed_output) == 3  # only the first batch's
    again = publish(cp, records(0, 3, 3))
    assert not again.dropped and len(sink.committed_output) == 6


def test_a_fatal_transaction_error_renews_the_producer_and_rewinds_to_the_committed() -> None:
    sink, source = FakeSink(), FakeSource()
    source.group_committed = {(T, 0): 3}
    cp = Transactional(source, sink, TOPICS)
    sink.transaction_error = KafkaFailure("fenced", "_FENCED", fatal=True)
    batch = publish(cp, records(0, 3, 3))
    assert batch.dropped and sink.renewals == 1 and "abort" not in sink.calls
    assert source.seeks == [{(T, 0): 3}]
    assert publish(cp, records(0, 3, 3)).dropped is False


@pytest.mark.parametrize("fatal", [True, False])
def test_a_failing_abort_renews_the_producer(fatal: bool) -> None:
    # After a broker restart abort_transaction itself can fail with INVALID_TXN_STATE: the
    # transaction's state is unknown, so the producer is replaced rather than the process exiting.
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    sink.transaction_error = KafkaFailure("x", "TIMED_OUT", abortable=True)
    sink.abort_error = KafkaFailure("y", "INVALID_TXN_STATE", fatal=fatal)
    publish(cp, records(0, 0, 2))
    assert sink.renewals == 1 and source.seeks == [{(T, 0): 0}]
    assert publish(cp, records(0, 0, 2)).dropped is False


def test_a_delivery_error_inside_a_transaction_aborts_it() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    sink.fail(lambda m: m.topic == "forecasts", KafkaError._MSG_TIMED_OUT)
    batch = publish(cp, records(0, 0, 2))
    assert batch.dropped and sink.calls == ["begin", "abort"] and sink.committed_output == []


@pytest.mark.parametrize("stuck", [False, True])
def test_exactly_once_shutdown_reports_an_unfinished_batch(stuck: bool) -> None:
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    publish(cp, records(0, 0, 2))
    if stuck:
        cp.open_batch(records(0, 2, 2))
    assert cp.close(timeout_s=1) is (not stuck)


def test_a_stop_bounds_a_transaction_that_cannot_commit() -> None:
    # Broker gone mid-transaction, SIGTERM: no call may outlast the stop deadline, and the
    # producer is not replaced while stopping (the restart's init_transactions fences it).
    sink, source = TimingOutSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS, timeout_s=30)
    cp.stop_by(time.monotonic() + 0.5)
    started = time.monotonic()
    batch = publish(cp, records(0, 0, 2))
    assert time.monotonic() - started < 1.5
    assert batch.dropped and sink.renewals == 0 and sink.committed_output == []
    assert cp.close(timeout_s=0) is False  # the dropped batch is left to the restart: exit 3


def test_a_fatal_error_is_repaired_once_the_broker_answers_again() -> None:
    sink, source = FakeSink(), FakeSource()
    source.group_committed = {(T, 0): 2}
    cp = Transactional(source, sink, TOPICS)
    publish(cp, records(0, 0, 2))
    sink.transaction_error = KafkaFailure("fenced", "_FENCED", fatal=True)
    sink.renew_error = KafkaFailure("init transactions: _TIMED_OUT", "_TIMED_OUT", retriable=True)
    assert publish(cp, records(0, 2, 2)).dropped  # renew fails: repair deferred
    # held back at the failed batch's start meanwhile, not running ahead
    assert sink.renewals == 0 and source.seeks == [{(T, 0): 2}]
    later = publish(cp, records(0, 4, 2))  # the broker is back: renew, rewind, this one dropped
    assert later.dropped and sink.renewals == 1 and source.seeks[-1] == {(T, 0): 2}
    assert not publish(cp, records(0, 2, 2)).dropped
    assert len(sink.committed_output) == 4


def test_at_most_one_commit_is_in_flight() -> None:
    # One-tick batches once queued a commit request per tick, which held the group's heartbeats
    # back until the session timed out.
    class SlowCommits(FakeSource):
        def commit(self, offsets, *, asynchronous):  # type: ignore[no-untyped-def]
            self.commits.append((dict(offsets), asynchronous))  # no reply yet

    now = [0.0]
    sink, source = FakeSink(), SlowCommits()
    cp = AtLeastOnce(
        source, sink, TOPICS, commit_interval_s=0.1, commit_after=1, clock=lambda: now[0]
    )
    for i in range(50):
        now[0] += 0.01
        publish(cp, records(0, i, 1))
        cp.settle()
    assert len(source.commits) == 1  # the rest wait for its reply (or COMMIT_REPLY_WAIT_S)
    source.on_commit(source.commits[0][0], None)
    now[0] += 0.01
    publish(cp, records(0, 50, 1))
    cp.settle()
    assert len(source.commits) == 2 and source.commits[1][0] == {(T, 0): 51}


class AbortTimesOut(FakeSink):
    """The broker died mid-transaction: the commit fails and the abort cannot reach it. Each
    abort records the time it was given and takes a little of it."""

    def __init__(self) -> None:
        super().__init__()
        self.abort_timeouts: list[float] = []
        self.on_abort: Callable[[int], None] = lambda n: None
        self.transaction_error = KafkaFailure("x", "_TIMED_OUT", abortable=True)

    def commit(self, timeout: float) -> None:
        self.transaction_error = KafkaFailure("x", "_TIMED_OUT", abortable=True)
        super().commit(timeout)

    def abort(self, timeout: float) -> None:
        self.abort_timeouts.append(timeout)
        self.on_abort(len(self.abort_timeouts))
        time.sleep(min(timeout, 0.02))
        raise KafkaFailure("abort transaction: _TIMED_OUT", "_TIMED_OUT", retriable=True)


def test_a_stop_during_an_abort_that_cannot_reach_the_broker_is_served_within_a_slice() -> None:
    # A signal handler runs only between calls into librdkafka. The abort was given the whole
    # transaction timeout (30 s), and a SIGTERM that came meanwhile waited for it (CI: not exited
    # 29 s after SIGTERM, the broker gone).
    sink, source = AbortTimesOut(), FakeSource()
    cp = Transactional(source, sink, TOPICS, timeout_s=30)
    sink.on_abort = lambda n: cp.stop_by(time.monotonic() + 0.1) if n == 3 else None
    batch = publish(cp, records(0, 0, 2))
    assert max(sink.abort_timeouts) <= 1.0
    assert 3 <= len(sink.abort_timeouts) <= 10  # retried, then given up at the stop deadline
    assert batch.dropped and sink.renewals == 0  # stopping: the restart fences the producer
    assert cp.close(timeout_s=0) is False


def test_an_abort_that_keeps_timing_out_replaces_the_producer() -> None:
    sink, source = AbortTimesOut(), FakeSource()
    source.group_committed = {(T, 0): 0}
    cp = Transactional(source, sink, TOPICS, timeout_s=0.2)
    batch = publish(cp, records(0, 0, 2))
    assert batch.dropped and len(sink.abort_timeouts) > 1
    assert sink.renewals == 1 and source.seeks == [{(T, 0): 0}]


def test_a_fatal_repair_never_blocks_longer_than_its_slice() -> None:
    class Recording(FakeSource):
        def committed(
            self, partitions: list[Partition], timeout: float = 10.0
        ) -> dict[Partition, int]:
            timeouts.append(timeout)
            return super().committed(partitions, timeout)

    class RenewRecording(FakeSink):
        def renew(self, init_timeout_s: float | None = None) -> None:
            assert init_timeout_s is not None
            timeouts.append(init_timeout_s)
            super().renew(init_timeout_s)

    timeouts: list[float] = []
    sink, source = RenewRecording(), Recording()
    cp = Transactional(source, sink, TOPICS, timeout_s=30)
    sink.transaction_error = KafkaFailure("fenced", "_FENCED", fatal=True)
    publish(cp, records(0, 0, 2))
    assert sink.renewals == 1 and len(timeouts) == 2 and max(timeouts) <= REPAIR_CALL_S <= 2.0


def test_the_final_commit_at_a_stop_is_bounded_when_no_reply_comes() -> None:
    # A synchronous commit has no timeout: with the coordinator gone it waited for seconds past
    # the stop deadline. At a stop the commit is sent asynchronously and its reply waited for
    # only until the deadline; unconfirmed, the stop reports work left undone (exit 3).
    class NoReply(FakeSource):
        served: float = 0.0

        def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
            assert asynchronous, "a synchronous commit at a stop cannot be bounded"
            self.commits.append((dict(offsets), asynchronous))  # sent; the reply never comes

        def serve(self, timeout: float) -> None:
            assert timeout <= 1.0
            self.served += timeout
            time.sleep(min(timeout, 0.01))

    sink, source = FakeSink(), NoReply()
    cp = AtLeastOnce(source, sink, TOPICS, commit_interval_s=3600.0, commit_after=10**9)
    publish(cp, records(0, 0, 3))
    cp.settle()  # delivered, not yet due for a commit
    cp.stop_by(time.monotonic() + 0.2)
    started = time.monotonic()
    assert cp.close(timeout_s=30) is False
    assert time.monotonic() - started < 5.0  # the deadline, not close's 30 s
    assert source.commits == [({(T, 0): 3}, True)] and source.served > 0

"""Review of the commit order (stream/checkpoint.py): timelines that probe its promises at the
edges. Each of these once failed on a bug found in review (a deferred fatal repair that lost
a partition or ran ahead of the history, a fatal at-least-once producer error, a failed async
commit never retried, revoked partitions brought back); they hold the fixes."""

from __future__ import annotations

from stream.checkpoint import AtLeastOnce, Transactional
from stream.errors import KafkaFailure
from tests.fakes import FakeSink, FakeSource
from tests.unit.test_checkpoint import TOPICS, T, publish, records

FATAL = KafkaFailure("commit transaction: _FENCED", "_FENCED", fatal=True)
RENEW_TIMED_OUT = KafkaFailure("init transactions: _TIMED_OUT", "_TIMED_OUT", retriable=True)


# ------------------------------------------------------------------ exactly-once


def test_a_batch_dropped_while_a_fatal_repair_is_deferred_is_read_again() -> None:
    sink, source = FakeSink(), FakeSource()
    cp = Transactional(source, sink, TOPICS)
    sink.transaction_error = FATAL
    sink.renew_error = RENEW_TIMED_OUT  # the broker does not answer yet: repair deferred
    assert publish(cp, records(0, 0, 2)).dropped
    # Deferred: held back at the failed batch's start rather than running ahead.
    assert source.seeks == [{(T, 0): 0}]
    # Consumed meanwhile: partition 0 after the failed batch, and partition 1 for the first time.
    later = publish(cp, records(0, 2, 2) + records(1, 0, 3))
    assert later.dropped and sink.renewals == 1
    # Dropped, never published: every partition of it must be read again from where it began
    # (or from the group's committed offset, which is not past it).
    rewound: dict[tuple[str, int], int] = {}
    for seek in source.seeks:
        rewound.update(seek)
    assert rewound.get((T, 0), 99) <= 0
    assert rewound.get((T, 1), 99) <= 0, f"partition 1 never rewound: seeks={source.seeks}"


def test_a_fatal_error_repaired_at_once_rewinds_every_open_batch() -> None:
    # The promise behind the deferred case above: with the broker answering, the repair rewinds
    # every partition of every batch opened since the committed offsets.
    sink, source = FakeSink(), FakeSource()
    source.group_committed = {(T, 0): 0}
    cp = Transactional(source, sink, TOPICS)
    cp.open_batch(records(1, 5, 2))  # say, abandoned and still open
    sink.transaction_error = FATAL
    failed = publish(cp, records(0, 0, 2))
    assert failed.dropped and sink.renewals == 1
    assert source.seeks == [{(T, 0): 0, (T, 1): 5}]
    assert cp.in_flight == 0


def test_a_failed_abort_is_never_followed_by_a_publish_before_the_rewind() -> None:
    # An abort that fails leaves the transaction unknown: nothing may be published until the
    # producer is renewed and the consumer is back at the group's committed offsets.
    sink, source = FakeSink(), FakeSource()
    source.group_committed = {(T, 0): 2}
    cp = Transactional(source, sink, TOPICS)
    publish(cp, records(0, 0, 2))
    sink.transaction_error = KafkaFailure("x", "_TIMED_OUT", abortable=True)
    sink.abort_error = KafkaFailure("abort: _STATE", "_STATE")
    sink.renew_error = RENEW_TIMED_OUT
    assert publish(cp, records(0, 2, 2)).dropped
    before = len(sink.committed_output)
    assert publish(cp, records(0, 4, 2)).dropped  # consumed before the rewind: not published
    assert len(sink.committed_output) == before
    assert source.seeks[-1] == {(T, 0): 2}


# ------------------------------------------------------------------ at-least-once


def test_a_failed_async_commit_is_retried_without_new_ticks() -> None:
    now = [0.0]

    class FailingCommits(FakeSource):
        def commit(self, offsets, *, asynchronous):  # type: ignore[no-untyped-def]
            self.commits.append((dict(offsets), asynchronous))
            self.on_commit({}, "REQUEST_TIMED_OUT (the coordinator did not answer)")

    sink, source = FakeSink(), FailingCommits()
    cp = AtLeastOnce(
        source, sink, TOPICS, commit_interval_s=0.1, commit_after=1, clock=lambda: now[0]
    )
    publish(cp, records(0, 0, 3))
    cp.settle()
    assert source.commits == [({(T, 0): 3}, True)]
    source.commit = FakeSource.commit.__get__(source)  # the coordinator is back
    for _ in range(20):  # no more ticks: an idle stream
        now[0] += 1.0
        cp.settle()
    assert cp.committed == {(T, 0): 3}, f"commits sent: {source.commits}"


def test_a_late_commit_reply_never_moves_committed_back_nor_to_a_revoked_partition() -> None:
    class SlowCommits(FakeSource):
        def commit(self, offsets, *, asynchronous):  # type: ignore[no-untyped-def]
            if not asynchronous:
                return super().commit(offsets, asynchronous=False)
            self.commits.append((dict(offsets), asynchronous))  # the reply comes later

    now = [0.0]
    sink, source = FakeSink(), SlowCommits()
    cp = AtLeastOnce(
        source, sink, TOPICS, commit_interval_s=0.1, commit_after=1, clock=lambda: now[0]
    )
    publish(cp, records(0, 0, 3))
    cp.settle()
    now[0] += 10
    publish(cp, records(0, 3, 3))
    cp.settle()
    first, second = source.commits[0][0], source.commits[1][0]
    source.on_commit(second, None)
    source.on_commit(first, None)  # replies out of order
    assert cp.committed == {(T, 0): 6}
    cp.revoke([(T, 0)], timeout_s=1)
    source.on_commit(second, None)  # a reply after the revoke
    assert cp.committed == {}


def test_a_rewind_drops_an_opened_batch_that_is_not_yet_published() -> None:
    # The batch being prepared (opened, not published) is behind the failed one: dropped too,
    # and the seek goes back to the failed batch's first offset, not to the prepared one's.
    from confluent_kafka import KafkaError

    sink, source = FakeSink(auto=False), FakeSource()
    cp = AtLeastOnce(source, sink, TOPICS, commit_interval_s=0.0, commit_after=1)
    failed = publish(cp, records(0, 0, 2))
    preparing = cp.open_batch(records(0, 2, 2) + records(1, 0, 2))
    sink.fail(lambda m: True, KafkaError._MSG_TIMED_OUT)
    sink.ack()
    assert cp.settle() == []
    assert failed.dropped and preparing.dropped
    assert source.seeks == [{(T, 0): 0, (T, 1): 0}] and source.commits == []


def test_a_deferred_repair_forgets_partitions_revoked_meanwhile() -> None:
    sink, source = FakeSink(), FakeSource()
    source.group_committed = {(T, 0): 0, (T, 1): 0}
    cp = Transactional(source, sink, TOPICS)
    cp.assigned({(T, 0): 0, (T, 1): 0})
    sink.transaction_error = FATAL
    sink.renew_error = RENEW_TIMED_OUT
    assert publish(cp, records(0, 0, 2)).dropped  # repair deferred
    cp.revoke([(T, 0), (T, 1)], timeout_s=1)
    before = len(source.seeks)
    cp.assigned({(T, 1): 0})  # the new assignment: partition 1 only
    publish(cp, records(1, 0, 2))  # the repair runs now
    assert (T, 0) not in cp.committed
    after = source.seeks[before:]
    assert all((T, 0) not in seek for seek in after), source.seeks

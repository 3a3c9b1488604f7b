"""The real producer (librdkafka, no broker behind it): a stop is not held up by a full queue; and
the Sink itself around a producer whose send_offsets never returns (librdkafka#5456)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

import pytest

from stream.checkpoint import AtLeastOnce, Topics, Transactional
from stream.contracts import Record
from stream.errors import KafkaFailure
from stream.kafka import Sink
from stream.pipeline import BatchResult
from tests.fakes import FakeSource
from tests.unit.test_checkpoint import output

#: nothing listens there; a queue of three messages fills at once
UNREACHABLE = {
    "bootstrap.servers": "127.0.0.1:1",
    "queue.buffering.max.messages": 3,
    "log_level": 0,
}


def full_sink() -> Sink:
    sink = Sink(dict(UNREACHABLE))
    for i in range(3):
        sink.produce("t", b"k", str(i).encode())
    return sink


def test_produce_into_a_full_queue_gives_up_at_the_stop_deadline() -> None:
    sink = full_sink()
    # The stop comes while produce() waits for room, as a signal handler's would.
    threading.Timer(0.3, lambda: sink.stop_by(time.monotonic())).start()
    with pytest.raises(KafkaFailure) as caught:
        sink.produce("t", b"k", b"one too many")
    assert caught.value.code == "_QUEUE_FULL" and "stop deadline" in str(caught.value)
    sink.close()


def test_a_batch_that_cannot_be_queued_at_a_stop_is_left_uncommitted() -> None:
    sink, source = full_sink(), FakeSource()
    cp = AtLeastOnce(source, sink, Topics("forecasts", "dlq"), commit_interval_s=0.0)
    cp.stop_by(time.monotonic() + 0.2)
    recs = [Record("ticks", 0, o, b"A", b"{}") for o in range(2)]
    batch = cp.open_batch(recs)
    result: BatchResult = output(recs)
    cp.publish(batch, result)  # returns at the deadline instead of waiting for the broker
    assert cp.close(timeout_s=0.2) is False  # exit 3: the batch is redone by the next run
    assert source.commits == []


class OffsetsNeverReturn:
    """A transactional producer whose send_offsets_to_transaction does not return until released,
    as librdkafka's did with the group coordinator down (confluentinc/librdkafka#5456: the call's
    timeout is not kept). Everything else answers at once."""

    made: ClassVar[list[OffsetsNeverReturn]] = []

    def __init__(self, conf: dict[str, object]) -> None:
        self.release = threading.Event()
        self.offsets_calls = 0
        self.aborts = 0
        OffsetsNeverReturn.made.append(self)

    def init_transactions(self, timeout: float) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def produce(self, topic: str, **kwargs: object) -> None:
        on_delivery = kwargs.get("on_delivery")
        if callable(on_delivery):
            on_delivery(None, None)

    def poll(self, timeout: float = 0.0) -> int:
        return 0

    def flush(self, timeout: float = 0.0) -> int:
        return 0

    def purge(self, **kwargs: object) -> None:
        pass

    def send_offsets_to_transaction(
        self, offsets: object, metadata: object, timeout: float
    ) -> None:
        self.offsets_calls += 1
        self.release.wait()

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1


def hung_sink() -> Sink:
    OffsetsNeverReturn.made.clear()
    return Sink(
        {"transactional.id": "t", "client.id": "tickcast-producer"},
        factory=OffsetsNeverReturn,  # type: ignore[arg-type]
    )


def bounded(call: Callable[[], object], within_s: float = 10.0) -> BaseException | None:
    """Run `call` on a thread; what it raised, once it returned. A call still running after
    `within_s` fails the test instead of hanging the suite."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(within_s)
    assert not worker.is_alive(), f"still blocked after {within_s} s"
    return raised[0] if raised else None


def test_send_offsets_that_librdkafka_never_returns_from_times_out_retriably() -> None:
    sink = hung_sink()
    producer = OffsetsNeverReturn.made[0]
    exc = bounded(lambda: sink.send_offsets({("t", 0): 5}, object(), 0.2))
    assert isinstance(exc, KafkaFailure) and exc.retriable and not exc.fatal
    # Called again (librdkafka's rule for a timed-out call), it waits for the same call.
    exc = bounded(lambda: sink.send_offsets({("t", 0): 5}, object(), 0.2))
    assert isinstance(exc, KafkaFailure) and producer.offsets_calls == 1
    # The abort cannot go through while the call is in librdkafka: the producer is replaced.
    exc = bounded(lambda: sink.abort(0.2))
    assert isinstance(exc, KafkaFailure) and exc.fatal and producer.aborts == 0
    # Once librdkafka lets go, the same call's result is taken, and the next call is new.
    producer.release.set()
    assert bounded(lambda: sink.send_offsets({("t", 0): 5}, object(), 5.0)) is None
    assert bounded(lambda: sink.abort(0.2)) is None and producer.aborts == 1


def test_a_transaction_whose_offsets_never_go_through_is_given_up_and_the_producer_replaced() -> (
    None
):
    sink, source = hung_sink(), FakeSource()
    source.group_committed = {("ticks", 0): 0}
    cp = Transactional(source, sink, Topics("forecasts", "dlq"), timeout_s=0.5)
    recs = [Record("ticks", 0, o, b"A", b"{}") for o in range(2)]
    batch = cp.open_batch(recs)
    result: BatchResult = output(recs)
    assert bounded(lambda: cp.publish(batch, result)) is None
    assert batch.dropped and len(OffsetsNeverReturn.made) == 2  # renewed, the batch rewound
    assert source.seeks == [{("ticks", 0): 0}]
    OffsetsNeverReturn.made[0].release.set()  # the old producer's thread ends with its call


def test_a_stop_while_send_offsets_hangs_is_served_at_its_deadline() -> None:
    sink, source = hung_sink(), FakeSource()
    cp = Transactional(source, sink, Topics("forecasts", "dlq"), timeout_s=30)
    recs = [Record("ticks", 0, o, b"A", b"{}") for o in range(2)]
    batch = cp.open_batch(recs)
    result: BatchResult = output(recs)
    threading.Timer(0.3, lambda: cp.stop_by(time.monotonic() + 0.2)).start()
    assert bounded(lambda: cp.publish(batch, result)) is None
    assert batch.dropped and cp.close(timeout_s=0) is False  # exit 3: redone by the next run
    OffsetsNeverReturn.made[0].release.set()


class LateOffsets(OffsetsNeverReturn):
    """send_offsets_to_transaction answers once released, after its caller stopped waiting; the
    producer's transactional calls are logged."""

    def __init__(self, conf: dict[str, object]) -> None:
        super().__init__(conf)
        self.log: list[str] = []
        self.sent: list[list[tuple[str, int, int]]] = []

    def begin_transaction(self) -> None:
        self.log.append("begin")

    def send_offsets_to_transaction(
        self, offsets: object, metadata: object, timeout: float
    ) -> None:
        self.release.wait()
        self.sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])  # type: ignore[attr-defined]
        self.log.append("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        self.log.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.log.append("abort")


def late_sink() -> tuple[Sink, LateOffsets]:
    OffsetsNeverReturn.made.clear()
    sink = Sink({"transactional.id": "t"}, factory=LateOffsets)  # type: ignore[arg-type]
    producer = OffsetsNeverReturn.made[0]
    assert isinstance(producer, LateOffsets)
    return sink, producer


def test_a_late_send_offsets_result_is_never_taken_by_the_next_transaction() -> None:
    # (review) The call returned successfully just after its caller gave up; the transaction was
    # aborted. The next transaction's send_offsets took that old result without sending its own
    # offsets, and committed forecasts without their input offsets (read twice after a restart).
    sink, producer = late_sink()
    with pytest.raises(KafkaFailure):
        sink.send_offsets({("ticks", 0): 5}, object(), 0.05)
    producer.release.set()  # librdkafka answers now, too late for that caller
    assert sink._offsets_call is not None
    sink._offsets_call.exception(5)
    sink.abort(1.0)
    sink.begin()
    sink.send_offsets({("ticks", 0): 9}, object(), 1.0)
    sink.commit(1.0)
    assert producer.sent == [[("ticks", 0, 5)], [("ticks", 0, 9)]], producer.log


def test_a_transaction_redone_after_a_late_send_offsets_commits_its_own_offsets() -> None:
    sink, producer = late_sink()
    cp = Transactional(FakeSource(), sink, Topics("forecasts", "dlq"), timeout_s=0.3)
    real_abort = sink.abort

    def abort_after_a_late_success(timeout: float) -> None:
        producer.release.set()  # send_offsets succeeds between the caller's last wait and abort
        if sink._offsets_call is not None:
            sink._offsets_call.exception(5)
        real_abort(timeout)

    sink.abort = abort_after_a_late_success  # type: ignore[method-assign]
    recs = [Record("ticks", 0, o, b"A", b"{}") for o in range(2)]
    first = cp.open_batch(recs)
    cp.publish(first, output(recs))
    assert first.dropped and producer.log.count("abort") == 1
    sink.abort = real_abort  # type: ignore[method-assign]
    redo = cp.open_batch(recs)
    cp.publish(redo, output(recs))
    assert not redo.dropped and producer.log[-1] == "commit"
    assert producer.log.count("send_offsets") == 2, producer.log  # its own, before its commit


def test_begin_while_send_offsets_is_still_in_librdkafka_replaces_the_producer() -> None:
    sink, producer = late_sink()
    with pytest.raises(KafkaFailure):
        sink.send_offsets({("ticks", 0): 5}, object(), 0.05)
    with pytest.raises(KafkaFailure) as caught:
        sink.begin()
    assert caught.value.fatal and "begin" not in producer.log
    producer.release.set()

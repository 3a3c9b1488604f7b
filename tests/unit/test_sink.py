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

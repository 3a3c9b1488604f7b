"""The real producer (librdkafka, no broker behind it): a stop is not held up by a full queue."""

from __future__ import annotations

import threading
import time

import pytest

from stream.checkpoint import AtLeastOnce, Topics
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

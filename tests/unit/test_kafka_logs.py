"""librdkafka's log lines go through Python logging and its repeat filter, never straight to
stderr (a dead broker was 195 `%3|...|FAIL|...` lines in 10 s). The real client, no broker."""

from __future__ import annotations

import logging
import time

import pytest

from stream.kafka import LIBRDKAFKA_LOG, Sink
from stream.logs import RepeatFilter


def test_a_dead_broker_is_one_routed_line_not_a_stream_on_stderr(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    (repeats,) = [f for f in LIBRDKAFKA_LOG.filters if isinstance(f, RepeatFilter)]
    repeats._seen.clear()  # another test may have said it within the minute
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    sink = Sink({"bootstrap.servers": "127.0.0.1:1", "reconnect.backoff.max.ms": 100})
    sink.produce("t", b"k", b"v")
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        sink.poll(0.1)  # serves the queued log events
    sink.close()
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert [r.name for r in refused] == ["librdkafka"], [r.getMessage() for r in refused]
    assert "Connection refused" not in capfd.readouterr().err

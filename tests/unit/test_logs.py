"""A repeated log line is said once, then summed up."""

from __future__ import annotations

import logging

from stream.logs import RepeatFilter


def _record(msg: str, name: str = "librdkafka", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_repeats_of_one_kind_are_dropped_then_counted() -> None:
    now = [0.0]
    f = RepeatFilter(every_s=10, clock=lambda: now[0])
    line = "FAIL 127.0.0.1:{port}/bootstrap: Connect failed: Connection refused (after {ms}ms)"
    assert f.filter(_record(line.format(port=9092, ms=0)))
    for i in range(195):
        now[0] += 0.05
        assert not f.filter(_record(line.format(port=9092, ms=i)))
    now[0] = 10.5
    again = _record(line.format(port=9092, ms=3))
    assert f.filter(again)
    assert "(and 195 more like it in the last 10 s)" in again.getMessage()


def test_different_kinds_and_loggers_pass() -> None:
    f = RepeatFilter(every_s=10, clock=lambda: 0.0)
    assert f.filter(_record("broker down"))
    assert f.filter(_record("broker down", name="stream.kafka"))
    assert f.filter(_record("broker down", level=logging.WARNING))
    assert f.filter(_record("another thing"))
    assert not f.filter(_record("broker down"))

"""Log lines that repeat are said once, then summed up: a dead broker is one clear line and a
periodic reminder, not 195 lines in 10 seconds.

librdkafka logs every failed connection attempt (`%3|...|FAIL|...| Connect to ipv4#127.0.0.1:9092
failed: Connection refused (after 0ms in state CONNECT)`), several a second per client. Its logs
and error callbacks are routed through Python logging (stream/kafka.py); this filter lets the first
line of a kind through, drops its repeats for `every_s`, and then lets one through again with how
many were dropped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

#: what varies between repeats of one kind of line: numbers (ports, timings, counts), hex ids
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")


class RepeatFilter(logging.Filter):
    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        #: kind -> (when last let through, repeats dropped since)
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.name}|{record.levelno}|{_VARYING.sub('#', record.getMessage())}"
        now = self.clock()
        with self._lock:
            last = self._seen.get(kind)
            if last is not None and now - last[0] < self.every_s:
                self._seen[kind] = (last[0], last[1] + 1)
                return False
            dropped = last[1] if last is not None else 0
            if len(self._seen) > 10_000:  # bounded: kinds come from outside input
                self._seen.clear()
            self._seen[kind] = (now, 0)
        if dropped:
            record.msg = f"{record.getMessage()} (and {dropped} more like it in the last {self.every_s:.0f} s)"
            record.args = None
        return True

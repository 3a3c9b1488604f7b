"""What a downstream service sees: forecasts on the output topic, read under read_committed, timed
from the moment the `tickcast run` process was launched.

The service's own view (ready to the last forecast in the topic's high watermarks, CPU of its
threads after ready) leaves out the start (imports, model load, group join) and, under
exactly-once, counts messages a reader cannot see yet. An outside harness sees neither; this is
its view, taken in the benchmark's process so the two are measured in the same run.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any


class CommittedReader(threading.Thread):
    """Reads `topic` from the beginning with isolation.level=read_committed until `expected`
    messages have been seen; records when the first and the last arrived (perf_counter)."""

    def __init__(self, conf: dict[str, Any], topic: str, expected: int) -> None:
        super().__init__(name="bench-observer", daemon=True)
        self.conf = {
            **conf,
            "group.id": f"bench-observer-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
        self.topic = topic
        self.expected = expected
        self.seen = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.done = threading.Event()
        self._halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.conf)
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            consumer.assign([TopicPartition(self.topic, p, 0) for p in partitions])
            self.ready.set()
            while not self._halt.is_set() and self.seen < self.expected:
                got = [m for m in consumer.consume(1000, 0.05) if m.error() is None]
                if got:
                    now = time.perf_counter()
                    if self.first_at is None:
                        self.first_at = now
                    self.seen += len(got)
                    self.last_at = now
            if self.seen >= self.expected:
                self.done.set()
        finally:
            self.ready.set()
            consumer.close()

    def finish(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every expected message; True if all were seen."""
        complete = self.done.wait(timeout_s)
        self._halt.set()
        self.join(15)
        return complete

"""In-memory stand-ins for tickcast's collaborators, for unit tests of pure logic.

The window store, cache and model fakes implement only what the pipeline relies on (the real store
and cache are tested against Redis in tests/integration). The Kafka fakes stand in for
stream.kafka's Source and Sink in tickcast's own terms (Records, (topic, partition) pairs); the
real adapter is tested against a broker in tests/integration and tests/e2e.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from confluent_kafka import KafkaError

from stream.contracts import Record, Tick, Window
from stream.errors import KafkaFailure
from stream.windows import OUTCOMES, WindowBatch

W = 3
F64 = npt.NDArray[np.float64]
Partition = tuple[str, int]


class FakeStore:
    """Windows of W prices per symbol; a redelivered offset gets its first window back.

    With `before`, each window carries the price before it, as the real store's do (scoring)."""

    def __init__(self, before: bool = False) -> None:
        self.prices: dict[str, list[float]] = {}
        self.last: dict[str, tuple[int, int]] = {}  # symbol -> (offset, ts)
        self.seen: dict[tuple[int, int], np.ndarray | None] = {}
        self.befores: dict[tuple[int, int], float] = {}
        self.with_before = before
        self.calls = 0

    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatch:
        self.calls += 1
        counts = dict.fromkeys(OUTCOMES, 0)
        windows: list[Window] = []
        rejected: list[tuple[Tick, str]] = []
        for t in ticks:
            pos = (t.partition, t.offset)
            if pos in self.seen:
                counts["replayed"] += 1
                prior = self.seen[pos]
                if prior is not None:
                    windows.append(Window(t, prior, True, self.befores[pos]))
                continue
            last = self.last.get(t.symbol)
            if last is not None and t.ts <= last[1]:
                verdict = "late" if t.ts < last[1] else "duplicate"
                counts[verdict] += 1
                rejected.append((t, verdict))
                continue
            series = self.prices.setdefault(t.symbol, [])
            series.append(t.price)
            self.last[t.symbol] = (t.offset, t.ts)
            counts["processed"] += 1
            window = np.array(series[-W:]) if len(series) >= W else None
            self.seen[pos] = window
            if window is None:
                counts["warming"] += 1
            else:
                before = series[-W - 1] if self.with_before and len(series) > W else float("nan")
                self.befores[pos] = before
                windows.append(Window(t, window, False, before))
        return WindowBatch(windows, rejected, counts)


class FakeCache:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gets: list[list[str]] = []
        self.puts: list[list[str]] = []

    def get_many(self, digests: Sequence[str], model_version: str) -> list[F64 | None]:
        assert model_version == FakeModel.version
        self.gets.append(list(digests))
        return [
            np.frombuffer(self.data[d], dtype=np.float64) if d in self.data else None
            for d in digests
        ]

    def put_many(self, items: Sequence[tuple[str, F64]], model_version: str) -> None:
        assert model_version == FakeModel.version
        self.puts.append([d for d, _ in items])
        for d, outputs in items:
            self.data[d] = outputs.tobytes()


class FakeModel:
    """Quantiles of the next log return: the mean of the window's log returns -/+ 0.01."""

    version = "m1"
    horizon = 1
    quantiles = (0.1, 0.5, 0.9)
    interval = 0.8

    def __init__(self) -> None:
        self.batches: list[F64] = []
        self.poison: set[float] = set()  # windows ending at one of these prices give NaN
        self.drop_row = False

    def predict_batch(self, windows: F64) -> F64:
        self.batches.append(windows.copy())
        mid = np.diff(np.log(windows), axis=1).mean(axis=1)
        out = np.stack([mid - 0.01, mid, mid + 0.01], axis=1)
        for i, w in enumerate(windows):
            if w[-1] in self.poison:
                out[i, 1] = np.nan
        return out[:-1] if self.drop_row else out


class FakeMessage:
    """What a delivery callback receives; the latch reads only the headers."""

    def __init__(self, headers: list[tuple[str, bytes]] | None) -> None:
        self._headers = headers

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers


@dataclass
class Produced:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    on_delivery: Callable[..., None] | None


class FakeSink:
    """A producer whose delivery reports arrive when the test says (or on poll, if `auto`).

    `fail(predicate, code)` makes matching messages fail delivery with a real KafkaError code;
    `refuse_over` makes produce() itself refuse larger values, as librdkafka does.
    """

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.pending: list[Produced] = []
        self.delivered: list[Produced] = []
        self.failures: list[tuple[Callable[[Produced], bool], int]] = []
        self.refuse_over: int | None = None
        self.stuck = False  # nothing is ever acknowledged (a broker that went away)
        self.calls: list[str] = []
        self.transaction_error: KafkaFailure | None = None
        self.abort_error: KafkaFailure | None = None
        self.renewals = 0
        self.renew_error: KafkaFailure | None = None
        self.stop_deadline = float("inf")
        self._offsets: dict[Partition, int] = {}
        #: messages of committed transactions, and of open ones
        self.committed_output: list[Produced] = []
        self._txn: list[Produced] = []

    def fail(self, predicate: Callable[[Produced], bool], code: int) -> None:
        self.failures.append((predicate, code))

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Callable[..., None] | None = None,
    ) -> None:
        if self.refuse_over is not None and value is not None and len(value) > self.refuse_over:
            raise KafkaFailure("produce: too large", "MSG_SIZE_TOO_LARGE")
        message = Produced(topic, key, value, headers, on_delivery)
        self.pending.append(message)
        self._txn.append(message)

    def ack(self, which: Sequence[int] | None = None) -> None:
        """Deliver the pending messages at these indexes (default: all), in the given order."""
        if self.stuck:
            return
        indexes = list(range(len(self.pending))) if which is None else list(which)
        chosen = [self.pending[i] for i in indexes]
        self.pending = [m for i, m in enumerate(self.pending) if i not in set(indexes)]
        for m in chosen:
            code = next((c for pred, c in self.failures if pred(m)), None)
            err = KafkaError(code) if code is not None else None
            if m.on_delivery is not None:
                m.on_delivery(err, FakeMessage(m.headers))
            if err is None:
                self.delivered.append(m)

    def poll(self, timeout: float = 0.0) -> None:
        if self.auto:
            self.ack()

    def flush(self, timeout: float) -> int:
        self.ack()
        return len(self.pending)

    def stop_by(self, deadline: float) -> None:
        self.stop_deadline = deadline

    def begin(self) -> None:
        self.calls.append("begin")
        self._txn = []

    def send_offsets(
        self, offsets: Mapping[Partition, int], group_metadata: object, timeout: float
    ) -> None:
        self._offsets = dict(offsets)

    def commit(self, timeout: float) -> None:
        self.calls.append(f"commit {self._offsets}")
        if self.transaction_error is not None:
            err, self.transaction_error = self.transaction_error, None
            raise err
        self.committed_output += self._txn
        self._txn = []

    def close(self) -> None:
        self.pending = []

    def abort(self, timeout: float) -> None:
        self.calls.append("abort")
        self._txn = []
        if self.abort_error is not None:
            err, self.abort_error = self.abort_error, None
            raise err

    def renew(self, init_timeout_s: float | None = None) -> None:
        if self.renew_error is not None:
            err, self.renew_error = self.renew_error, None
            raise err
        self.calls.append("renew")
        self.renewals += 1
        self._txn = []


@dataclass
class FakeSource:
    """A consumer over in-memory partitions, in Records.

    `log` holds each partition's records; `position` the next offset to read. Partitions are
    read only once resumed (the service subscribes paused). `before_consume` callbacks run inside
    the next consume, as rebalance callbacks do.
    """

    log: dict[Partition, list[Record]] = field(default_factory=dict)
    position: dict[Partition, int] = field(default_factory=dict)
    group_committed: dict[Partition, int] = field(default_factory=dict)
    resumed: set[Partition] = field(default_factory=set)
    commits: list[tuple[dict[Partition, int], bool]] = field(default_factory=list)
    seeks: list[dict[Partition, int]] = field(default_factory=list)
    before_consume: list[Callable[[], None]] = field(default_factory=list)
    closed: bool = False
    commit_error: KafkaFailure | None = None
    on_commit: Callable[[dict[Partition, int], str | None], None] = lambda offsets, err: None

    def add(self, topic: str, partition: int, values: Sequence[tuple[bytes, bytes]]) -> None:
        records = self.log.setdefault((topic, partition), [])
        for key, value in values:
            records.append(Record(topic, partition, len(records), key, value, 1_000))

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        while self.before_consume:
            self.before_consume.pop(0)()
        out: list[Record] = []
        for p in sorted(self.resumed):
            start = self.position.get(p, self.group_committed.get(p, 0))
            chunk = self.log.get(p, [])[start : start + max_records - len(out)]
            out += chunk
            self.position[p] = start + len(chunk)
        return out

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        if self.commit_error is not None and not asynchronous:
            raise self.commit_error
        self.commits.append((dict(offsets), asynchronous))
        self.group_committed.update(offsets)
        if asynchronous:
            self.on_commit(dict(offsets), None)

    def committed(self, partitions: list[Partition], timeout: float = 10.0) -> dict[Partition, int]:
        return {p: self.group_committed[p] for p in partitions if p in self.group_committed}

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        self.seeks.append(dict(offsets))
        self.position.update(offsets)

    def group_metadata(self) -> object:
        return "group"

    def low_watermarks(
        self, partitions: list[Partition], timeout: float = 10.0
    ) -> dict[Partition, int]:
        return dict.fromkeys(partitions, 0)

    def high_watermarks(
        self, partitions: list[Partition], timeout: float = 10.0
    ) -> dict[Partition, int]:
        return {p: len(self.log.get(p, [])) for p in partitions}

    def serve(self, timeout: float) -> None:
        pass  # commit replies arrive within commit() here

    def resume(self, partitions: list[Partition]) -> None:
        self.resumed.update(partitions)

    def close(self, timeout: float | None = None) -> bool:
        self.closed = True
        return True


class TimingOutSink(FakeSink):
    """A transactional producer whose broker went away: commits time out (retriable, as
    librdkafka reports them), each call taking the time it was given."""

    def commit(self, timeout: float) -> None:
        import time

        time.sleep(timeout)
        self.calls.append("commit timed out")
        raise KafkaFailure("commit transaction: _TIMED_OUT", "_TIMED_OUT", retriable=True)

    def abort(self, timeout: float) -> None:
        import time

        time.sleep(timeout)
        self.calls.append("abort timed out")
        raise KafkaFailure("abort transaction: _TIMED_OUT", "_TIMED_OUT", retriable=True)

"""What the fault tests share: sizes, a paced tick feed, a reader that drains a topic to its end,
the exact forecasts a feed must give, and the comparison of what was published against them.

Sizes: small enough for `make test` by default; `TICKCAST_FAULTS_FULL=1` (`make faults`) runs the
full sizes of issue 15. Random moments come from one seed, printed with every failure;
`TICKCAST_FAULTS_SEED=<n>` replays a run.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from stream.contracts import Forecast, decode_forecast
from tests.e2e.harness import expected_windows

FULL = os.environ.get("TICKCAST_FAULTS_FULL", "") not in ("", "0")


@dataclass(frozen=True)
class Sizes:
    kills: int  # SIGKILLs per guarantee
    kill_symbols: int
    kill_rows: int
    kill_rate: float  # ticks/s while the kills happen
    flushes: int  # FLUSHALLs while the service runs
    redis_restarts: int  # Redis killed and restarted empty while the service runs
    redis_symbols: int
    redis_rows: int
    redis_rate: float
    broker_symbols: int
    broker_rows: int
    broker_rate: float
    corpus: int  # malformed messages in the fuzz test
    huge: int  # of which multi-MB
    corpus_symbols: int
    corpus_rows: int


SIZES = (
    Sizes(
        kills=12,
        kill_symbols=20,
        kill_rows=3000,
        kill_rate=1200.0,
        flushes=10,
        redis_restarts=5,
        redis_symbols=10,
        redis_rows=1500,
        redis_rate=600.0,
        broker_symbols=10,
        broker_rows=1000,
        broker_rate=300.0,
        corpus=10_000,
        huge=6,
        corpus_symbols=20,
        corpus_rows=1000,
    )
    if FULL
    else Sizes(
        kills=4,
        kill_symbols=8,
        kill_rows=500,
        kill_rate=250.0,
        flushes=3,
        redis_restarts=2,
        redis_symbols=6,
        redis_rows=400,
        redis_rate=200.0,
        broker_symbols=6,
        broker_rows=300,
        broker_rate=100.0,
        corpus=2_000,
        huge=3,
        corpus_symbols=6,
        corpus_rows=200,
    )
)


def seeded_rng() -> tuple[random.Random, int]:
    seed = int(os.environ.get("TICKCAST_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
    return random.Random(seed), seed


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.2
) -> float:
    """Seconds it took for `predicate` to hold; AssertionError naming `what` after `timeout`."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


# ---------------------------------------------------------------- producing


Message = tuple[bytes | None, bytes | None]


class Feeder(threading.Thread):
    """Produces `messages` to `topic` at `rate` per second (None: as fast as it can) on a thread
    of its own, so ticks keep arriving while a test kills things. `positions[i]` is where message
    i landed, (partition, offset), once delivered."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        messages: Sequence[Message],
        rate: float | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"feeder-{topic}")
        self.conf = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # a broker restart must not duplicate a tick
            "linger.ms": 5,
            # Its errors come back in the delivery reports; a broker the test killed would
            # otherwise fill the output with connection refusals.
            "log_level": 0,
            **(config or {}),
        }
        self.topic = topic
        self.messages = messages
        self.rate = rate
        self.positions: list[tuple[int, int] | None] = [None] * len(messages)
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self.produced = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.failure = exc

    def _run(self) -> None:
        producer = Producer(self.conf)
        started = time.monotonic()

        def report(i: int) -> Callable[[KafkaError | None, Any], None]:
            def on_delivery(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    self.errors.append(f"message {i}: {err.name()} {err.str()}")
                else:
                    self.positions[i] = (msg.partition(), msg.offset())

            return on_delivery

        for i, (key, value) in enumerate(self.messages):
            if self.rate is not None:
                delay = started + i / self.rate - time.monotonic()
                if delay > 0:
                    producer.poll(delay)
            while True:
                try:
                    producer.produce(self.topic, key=key, value=value, on_delivery=report(i))
                    break
                except BufferError:
                    producer.poll(0.05)
            self.produced = i + 1
            if i % 1000 == 0:
                producer.poll(0)
        left = producer.flush(180)
        if left:
            self.errors.append(f"{left} messages undelivered after 180 s")

    def finish(self, timeout: float = 240.0) -> list[tuple[int, int]]:
        """Wait for every delivery report; the positions of all messages."""
        self.join(timeout)
        assert not self.is_alive(), f"the feeder did not finish within {timeout:.0f} s"
        if self.failure is not None:
            raise self.failure
        assert not self.errors, f"the test's own produce failed: {self.errors[:5]}"
        assert all(p is not None for p in self.positions)
        return [p for p in self.positions if p is not None]


def feed_now(
    bootstrap: str, topic: str, messages: Sequence[Message], config: dict[str, Any] | None = None
) -> list[tuple[int, int]]:
    feeder = Feeder(bootstrap, topic, messages, None, config)
    feeder.start()
    return feeder.finish()


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class Received:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def drain(
    bootstrap: str, topic: str, *, read_committed: bool = True, timeout: float = 60.0
) -> list[Received]:
    """Every message of `topic` up to the end offsets it has now (read_committed: what committed
    transactions hold; aborted ones and open ones are not returned)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drain-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "receive.message.max.bytes": 80 * 1024 * 1024,
        }
    )
    got: list[Received] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
        pending = {p for p in parts if ends[p] > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, (
                f"{topic}: partitions {sorted(pending)} not read to their end offsets "
                f"{ends} within {timeout:.0f} s (a transaction left open?)"
            )
            for m in consumer.consume(1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if m.offset() >= ends[m.partition()]:
                            pending.discard(m.partition())
                        continue
                    raise AssertionError(f"reading {topic}: {err}")
                got.append(
                    Received(
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        {k: v or b"" for k, v in m.headers() or []},
                    )
                )
    finally:
        consumer.close()
    return got


# ---------------------------------------------------------------- the forecasts a feed must give


@dataclass(frozen=True)
class Expected:
    """One forecast the feed must give, field for field (all but window_hash, cached and
    produced_at, which the comparison of repeats covers)."""

    symbol: str
    ts: int
    price: float
    lower: float
    upper: float
    last_price: float
    partition: int
    offset: int


def expected_forecasts(
    feed: Sequence[Message],
    positions: Sequence[tuple[int, int]],
    predictor: Any,
) -> dict[tuple[str, int], Expected]:
    """Every full window of the valid ticks in `feed` (positions: where each message of the feed
    landed), forecast by the test's own predictor, computed as the pipeline does. The model's
    output does not depend on the batch (DESIGN: Wire contracts), so these are the service's
    bits exactly."""
    valid = [(m, pos) for m, pos in zip(feed, positions, strict=True) if _is_valid(m)]
    windows = expected_windows([(k, v or b"") for (k, v), _ in valid])
    where: dict[tuple[str, int], tuple[int, int]] = {}
    for (_, value), pos in valid:
        obj = orjson.loads(value or b"")
        where[(obj["symbol"], obj["ts"])] = pos
    keys = list(windows)
    if not keys:
        return {}
    rows = predictor.predict_batch(np.stack([windows[k] for k in keys]))
    qs = list(predictor.quantiles)
    lo_i, mid_i, hi_i = 0, qs.index(0.5), len(qs) - 1
    out: dict[tuple[str, int], Expected] = {}
    for key, row in zip(keys, rows, strict=True):
        last = float(windows[key][-1])
        partition, offset = where[key]
        out[key] = Expected(
            key[0],
            key[1],
            last * math.exp(float(row[mid_i])),
            last * math.exp(float(row[lo_i])),
            last * math.exp(float(row[hi_i])),
            last,
            partition,
            offset,
        )
    return out


def _is_valid(message: Message) -> bool:
    """A tick of the gold feed (tools/feed.py): key = symbol, a small JSON object."""
    key, value = message
    if not value or len(value) > 1024 or not key:
        return False
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("symbol", "").encode() == key


# ---------------------------------------------------------------- the comparison


def _fields(f: Forecast) -> tuple[object, ...]:
    """Everything but `cached` and `produced_at`, which may differ between two copies."""
    return tuple(getattr(f, n) for n in f.__slots__ if n not in ("cached", "produced_at"))


@dataclass
class Outcome:
    """Published forecasts against the expected ones."""

    expected: int
    seen: int = 0
    lost: list[tuple[str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, int]] = field(default_factory=list)
    duplicated: int = 0  # copies beyond the first
    different: list[str] = field(default_factory=list)  # a forecast unlike the expected one
    repeats_differ: list[str] = field(default_factory=list)  # two copies that differ
    undecodable: int = 0

    def summary(self) -> str:
        return (
            f"forecasts expected {self.expected}, seen {self.seen}, lost {len(self.lost)}, "
            f"unexpected {len(self.unexpected)}, duplicated {self.duplicated}, "
            f"different {len(self.different)}, repeats differing {len(self.repeats_differ)}, "
            f"undecodable {self.undecodable}"
        )

    def problems(self, exactly_once: bool) -> list[str]:
        out = []
        if self.lost:
            out.append(f"lost {len(self.lost)}, e.g. {sorted(self.lost)[:5]}")
        if self.unexpected:
            out.append(f"unexpected {len(self.unexpected)}, e.g. {sorted(self.unexpected)[:5]}")
        if self.different:
            out.append(f"different from the expected forecast: {self.different[:5]}")
        if self.repeats_differ:
            out.append(f"repeated forecasts differ: {self.repeats_differ[:5]}")
        if self.undecodable:
            out.append(f"{self.undecodable} undecodable messages")
        if exactly_once and self.duplicated:
            out.append(f"{self.duplicated} forecasts published more than once")
        return out


def compare(
    records: Sequence[Received],
    expected: dict[tuple[str, int], Expected],
    predictor: Any,
    ticks_topic: str,
) -> Outcome:
    outcome = Outcome(expected=len(expected), seen=len(records))
    copies: dict[tuple[str, int], list[tuple[Forecast, Received]]] = defaultdict(list)
    for r in records:
        try:
            f = decode_forecast(r.value or b"")
        except ValueError:
            outcome.undecodable += 1
            continue
        copies[(f.symbol, f.ts)].append((f, r))
    outcome.lost = [k for k in expected if k not in copies]
    outcome.unexpected = [k for k in copies if k not in expected]
    for key, group in copies.items():
        outcome.duplicated += len(group) - 1
        first = _fields(group[0][0])
        for f, _ in group[1:]:
            if _fields(f) != first:
                outcome.repeats_differ.append(f"{key}: {group[0][0]!r} != {f!r}")
        want = expected.get(key)
        if want is None:
            continue
        f, r = group[0]
        got = {
            "price": f.price,
            "lower": f.lower,
            "upper": f.upper,
            "last_price": f.last_price,
            "horizon": f.horizon,
            "interval": f.interval,
            "model_version": f.model_version,
            "source": (f.source.topic, f.source.partition, f.source.offset),
            "key": r.key,
            "header model-version": r.headers.get("model-version"),
            "header source-offset": r.headers.get("source-offset"),
        }
        wanted = {
            "price": want.price,
            "lower": want.lower,
            "upper": want.upper,
            "last_price": want.last_price,
            "horizon": predictor.horizon,
            "interval": float(predictor.interval),
            "model_version": predictor.version,
            "source": (ticks_topic, want.partition, want.offset),
            "key": want.symbol.encode(),
            "header model-version": predictor.version.encode(),
            "header source-offset": str(want.offset).encode(),
        }
        bad = [f"{n} {got[n]!r} != {wanted[n]!r}" for n in got if got[n] != wanted[n]]
        if bad:
            outcome.different.append(f"{key}: {'; '.join(bad)}")
    return outcome

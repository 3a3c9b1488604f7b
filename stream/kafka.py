"""The Kafka adapter: the only module of tickcast that imports confluent_kafka.

Kafka's types end here, at the source, as in bytewax's Kafka connector: a consumed message becomes
a `Record`, a partition is a `(topic, partition)` pair, offsets are plain ints (`Offsets` maps a
partition to the next offset to read), and librdkafka's errors become `KafkaFailure`s that say
whether they are fatal, abortable or retriable. The rest of tickcast (the checkpoint, the runner,
the rebuild, the commands) speaks those terms only, so it is tested with a fake adapter.

    Source         the group consumer: batches of Records, rebalance callbacks, commits, seeks
    Sink           the producer: produce, delivery reports, transactions, renewal after a fatal error
    DeliveryLatch  counts a batch's outstanding produces and keeps its first delivery error
    read_ranges    a group-less reader of offset ranges (the window rebuild)

The commit order itself is not here: stream/checkpoint.py owns it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource  # not re-exported in the stubs
from confluent_kafka.admin._listoffsets import OffsetSpec  # nor is this, and it is untyped
from confluent_kafka.cimpl import NewTopic

from stream.config import Settings
from stream.contracts import Record
from stream.errors import ConfigError, KafkaFailure, UnreachableError
from stream.logs import RepeatFilter

log = logging.getLogger(__name__)

#: (topic, partition)
Partition = tuple[str, int]
#: partition -> the next offset to read (Kafka's committed-offset convention)
Offsets = dict[Partition, int]

#: A dead letter the broker refuses for what it is (too large, say) can never be delivered; it is
#: counted and skipped rather than failing its batch forever (DESIGN: Wire contracts).
_UNDELIVERABLE = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_MSG,
}


#: librdkafka's own log lines and error callbacks, through Python logging, repeats summed up
LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def _not_a_role_notice(record: logging.LogRecord) -> bool:
    """`[kafka.client]` goes to every client, so a consumer property reaching a producer (and
    the reverse) is by design, not news worth a warning per client."""
    message = record.getMessage()
    return not (
        "CONFWARN" in message
        and ("will be ignored by this producer" in message or "ignored by this consumer" in message)
    )


LIBRDKAFKA_LOG.addFilter(_not_a_role_notice)
LIBRDKAFKA_LOG.addFilter(RepeatFilter(every_s=60.0))


def _routed(conf: dict[str, Any]) -> dict[str, Any]:
    """Every client's librdkafka log lines go through Python logging (and RepeatFilter), never
    straight to stderr."""
    return conf if "logger" in conf else {**conf, "logger": LIBRDKAFKA_LOG}


class ClientEvents:
    """librdkafka's logs, errors and statistics, in tickcast's terms, for every client it makes.

    Logs go to the `librdkafka` logger (a dead broker is one line, then a reminder a minute).
    Errors are counted by code; all brokers down is reported as Kafka unreachable at the
    configured address until a statistics report shows a broker up again. Statistics (every
    `stats_interval_ms`) give each broker's round-trip time and the client's queue.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        on_error: Callable[[str], None] = lambda code: None,
        on_down: Callable[[str], None] = lambda why: None,
        on_up: Callable[[], None] = lambda: None,
        on_stats: Callable[[str, dict[str, float], int], None] = lambda c, rtt, q: None,
        stats_interval_ms: int = 5000,
    ) -> None:
        self.bootstrap = bootstrap
        self.on_error = on_error
        self.on_down = on_down
        self.on_up = on_up
        self.on_stats = on_stats
        self.stats_interval_ms = stats_interval_ms

    def config(self, role: str) -> dict[str, Any]:
        """Client keys for a client of `role` (consumer, producer, admin, rebuild, ...)."""
        return {
            "logger": LIBRDKAFKA_LOG,
            "error_cb": self._error,
            "stats_cb": self._stats,
            "statistics.interval.ms": self.stats_interval_ms,
            "client.id": f"tickcast-{role}",
        }

    def _error(self, err: KafkaError) -> None:
        self.on_error(err.name())
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.on_down(f"{self.bootstrap} (kafka.bootstrap_servers): {err.str()}")
        LIBRDKAFKA_LOG.warning("kafka error %s: %s", err.name(), err.str())

    def _stats(self, text: str) -> None:
        try:
            stats = orjson.loads(text)
            brokers = stats.get("brokers", {})
            rtt = {
                b.get("nodename", name): b["rtt"]["avg"] / 1e6
                for name, b in brokers.items()
                if b.get("nodeid", -1) >= 0 and b.get("rtt", {}).get("cnt", 0)
            }
            up = any(b.get("state") == "UP" for b in brokers.values() if b.get("nodeid", -1) >= 0)
            self.on_stats(str(stats.get("client_id", "")), rtt, int(stats.get("msg_cnt", 0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
            return
        if up:
            self.on_up()


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    conf = settings.kafka.librdkafka_common()
    conf.update(
        {
            "group.id": group_id or settings.kafka.group_id,
            # Offsets are committed by the checkpoint only after a batch's output is delivered.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Never act on ticks from an aborted upstream transaction.
            "isolation.level": "read_committed",
            "session.timeout.ms": settings.kafka.session_timeout_ms,
            "max.poll.interval.ms": 300_000,
            "fetch.wait.max.ms": 10,
            # Fair under a backlog: each fetch brings at most 64 KiB (~1,000 ticks) per partition,
            # so the local queue interleaves the partitions in small runs. With librdkafka's 1 MiB
            # default a backlog was drained one partition after another (lag and latency uneven,
            # nothing committed on the others). 64 KiB x 6 partitions still fills a 1,000-tick
            # batch many times over per fetch.
            "max.partition.fetch.bytes": 65_536,
            "queued.max.messages.kbytes": 32_768,
            "partition.assignment.strategy": "range",
        }
    )
    # [kafka.client] has the last word over the tuning above (what the delivery guarantee rests
    # on cannot be passed through: stream/config.py refuses it).
    conf.update(settings.kafka.client_properties())
    return conf


def producer_config(settings: Settings, transactional_id: str | None = None) -> dict[str, Any]:
    conf = settings.kafka.librdkafka_common()
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
        }
    )
    conf.update(settings.kafka.client_properties())
    if transactional_id is not None:
        conf["transactional.id"] = transactional_id
        # An instance killed mid-transaction holds back read_committed readers until this expires
        # (or until it restarts with the same transactional.id, which aborts it at once).
        conf["transaction.timeout.ms"] = 15_000
    return conf


def failure(exc: KafkaException | KafkaError, doing: str) -> KafkaFailure:
    """librdkafka's error as a KafkaFailure, its code and kind kept readable."""
    err = exc if isinstance(exc, KafkaError) else (exc.args[0] if exc.args else None)
    if not isinstance(err, KafkaError):
        return KafkaFailure(f"{doing}: {exc}", "unknown")
    return KafkaFailure(
        f"{doing}: {err.name()} ({err.str()})",
        err.name(),
        fatal=err.fatal(),
        retriable=err.retriable(),
        abortable=err.txn_requires_abort(),
    )


def client_error_detail(exc: BaseException) -> str | None:
    """The readable detail of a Kafka client exception; None if `exc` is not one."""
    if not isinstance(exc, KafkaException):
        return None
    err = exc.args[0] if exc.args else None
    return f"{err.str()}" if isinstance(err, KafkaError) else str(exc)


def _tps(partitions: Iterable[Partition]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t, p in partitions]


def _offset_tps(offsets: Mapping[Partition, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def _partitions(tps: Iterable[TopicPartition]) -> list[Partition]:
    return [(tp.topic, tp.partition) for tp in tps]


def _to_records(messages: Sequence[Message], on_error: Callable[[str], None]) -> list[Record]:
    """Kafka's messages as Records; errors counted (a fatal one raised), end-of-partition events
    dropped. On the hot path: one pass, no per-field helper calls."""
    records: list[Record] = []
    append = records.append
    record = Record
    for m in messages:
        if m.error() is not None:
            _consume_error(m, on_error)
            continue
        kind, stamp = m.timestamp()
        headers = m.headers()
        append(
            record(
                m.topic(),  # type: ignore[arg-type]  # a consumed message has all three
                m.partition(),  # type: ignore[arg-type]
                m.offset(),  # type: ignore[arg-type]
                m.key(),
                m.value(),
                stamp if kind else -1,
                tuple(headers) if headers else (),  # type: ignore[arg-type]
            )
        )
    return records


def _consume_error(m: Message, on_error: Callable[[str], None]) -> None:
    err = m.error()
    assert err is not None
    if err.code() == KafkaError._PARTITION_EOF:
        return
    on_error(err.name())
    log.warning("consume error=%s detail=%s", err.name(), err.str())
    if err.fatal():
        raise failure(err, "consume")


#: the most a resume spends waking librdkafka's fetchers (Source._wake_fetchers)
WAKE_BUDGET_S = 0.5


def one_per_leader(
    tps: Sequence[TopicPartition], topics: Mapping[str, Any]
) -> list[TopicPartition]:
    """One of `tps` per leader broker, from each topic's metadata (`TopicMetadata` by name, None
    where unknown); partitions without a leader (-1, mid-election) or unknown are left out."""
    chosen: dict[int, TopicPartition] = {}
    for tp in tps:
        meta = topics.get(tp.topic)
        part = meta.partitions.get(tp.partition) if meta is not None else None
        if part is not None and part.leader >= 0:
            chosen.setdefault(part.leader, tp)
    return list(chosen.values())


class Source:
    """The group consumer, in Records.

    `subscribe(..., paused=True)` (the service) delivers every assignment paused: `on_assign` runs
    inside `consume` (a rebalance callback), and the work an assignment may need (reading the
    committed offsets, rebuilding windows) belongs in the loop, not in the callback. The loop
    resumes the partitions once that is done.
    """

    def __init__(
        self,
        conf: dict[str, Any],
        on_error: Callable[[str], None] = lambda code: None,
    ) -> None:
        self.on_error = on_error
        #: set by the checkpoint: the result of an asynchronous commit (offsets, error or None)
        self.on_commit: Callable[[Offsets, str | None], None] = lambda offsets, err: None
        self._consumer = Consumer(_routed({**conf, "on_commit": self._committed_async}))

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[list[Partition]], None] = lambda parts: None,
        on_revoke: Callable[[list[Partition]], None] = lambda parts: None,
        on_lost: Callable[[list[Partition]], None] = lambda parts: None,
        *,
        paused: bool = False,
    ) -> None:
        def assigned(consumer: Consumer, tps: list[TopicPartition]) -> None:
            if paused:
                consumer.assign(tps)
                consumer.pause(tps)
            on_assign(_partitions(tps))

        self._consumer.subscribe(
            topics,
            on_assign=assigned,
            on_revoke=lambda consumer, tps: on_revoke(_partitions(tps)),
            on_lost=lambda consumer, tps: on_lost(_partitions(tps)),
        )

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        return _to_records(
            self._consumer.consume(num_messages=max_records, timeout=timeout), self.on_error
        )

    def resume(self, partitions: list[Partition]) -> None:
        tps = _tps(partitions)
        self._consumer.resume(tps)
        self._wake_fetchers(tps)

    def _wake_fetchers(self, tps: list[TopicPartition]) -> None:
        """Start the resumed partitions' fetches now, not up to a second later.

        librdkafka does not wake a broker thread on resume: a partition resumed after its fetcher
        went idle waits for that thread's next wake-up, up to 1 s (seen here: every start of the
        service lost ~1 s between recovery and its first batch; rdkafka_partition.c wakes the
        thread only when a partition's fetch state changes). Any request to the partition's
        leader wakes its thread, and on that pass it sees the resumed partitions: one end-offset
        query per leader. Best effort, within WAKE_BUDGET_S in all: a leader that does not answer
        (or a partition without one, mid-election) only keeps the old wait for its partitions."""
        deadline = time.monotonic() + WAKE_BUDGET_S

        def left() -> float:
            return max(deadline - time.monotonic(), 0.0)

        topics: dict[str, Any] = {}
        for topic in {tp.topic for tp in tps}:
            try:
                topics[topic] = self._consumer.list_topics(topic, timeout=left()).topics.get(topic)
            except KafkaException as exc:
                log.debug("fetchers of %s not woken after resume: %s", topic, exc)
        for tp in one_per_leader(tps, topics):
            if left() <= 0:
                break
            try:
                self._consumer.get_watermark_offsets(tp, timeout=left(), cached=False)
            except KafkaException as exc:
                log.debug("fetcher of %s[%d] not woken: %s", tp.topic, tp.partition, exc)

    def serve(self, timeout: float) -> None:
        """Serve callbacks (commit replies) for up to `timeout`, at the stop only: a record
        fetched meanwhile is dropped, uncommitted (the next run reads it again)."""
        self._consumer.poll(timeout)

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool) -> None:
        """Commit `offsets`; a synchronous commit raises KafkaFailure when it fails."""
        try:
            if asynchronous:
                self._consumer.commit(offsets=_offset_tps(offsets), asynchronous=True)
            else:
                self._consumer.commit(offsets=_offset_tps(offsets), asynchronous=False)
        except KafkaException as exc:
            raise failure(exc, "commit") from None

    def committed(self, partitions: list[Partition], timeout: float = 10.0) -> Offsets:
        """The group's committed offsets of `partitions` (those without one are left out)."""
        try:
            tps = self._consumer.committed(_tps(partitions), timeout=timeout)
        except KafkaException as exc:
            raise failure(exc, "read committed offsets") from None
        return {(tp.topic, tp.partition): tp.offset for tp in tps if tp.offset >= 0}

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Read each partition again from the given offset (a rewind)."""
        for tp in _offset_tps(offsets):
            try:
                self._consumer.seek(tp)
            except KafkaException as exc:
                # Not yet fetching (just assigned): the position is set by the next assign.
                log.warning('seek partition="%s[%d]" failed: %s', tp.topic, tp.partition, exc)

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def low_watermarks(self, partitions: list[Partition], timeout: float = 10.0) -> Offsets:
        out: Offsets = {}
        for tp in _tps(partitions):
            try:
                out[(tp.topic, tp.partition)] = self._consumer.get_watermark_offsets(
                    tp, timeout=timeout
                )[0]
            except KafkaException as exc:
                log.warning('no watermarks partition="%s[%d]": %s', tp.topic, tp.partition, exc)
        return out

    def high_watermarks(self, partitions: list[Partition], timeout: float = 10.0) -> Offsets:
        """The partitions' current end offsets, asked of the broker (not the fetcher's cache)."""
        out: Offsets = {}
        for tp in _tps(partitions):
            try:
                out[(tp.topic, tp.partition)] = self._consumer.get_watermark_offsets(
                    tp, timeout=timeout, cached=False
                )[1]
            except KafkaException as exc:
                raise failure(exc, f"watermarks of {tp.topic}[{tp.partition}]") from None
        return out

    def close(self, timeout: float | None = None) -> bool:
        """Leave the group and close. With `timeout` (a stop), wait at most that long: with the
        broker gone librdkafka's close waited seconds for the group coordinator past the
        shutdown deadline; it is then left to finish (or not) on a daemon thread, and the process
        exits without it. True if it closed in time."""
        if timeout is None:
            self._consumer.close()
            return True
        closed = threading.Event()

        def closing() -> None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            closed.set()

        threading.Thread(target=closing, name="tickcast-consumer-close", daemon=True).start()
        if closed.wait(timeout):
            return True
        log.warning("consumer not closed within %.1f s (broker away?); exiting without it", timeout)
        return False

    def _committed_async(self, err: KafkaError | None, tps: list[TopicPartition]) -> None:
        if err is not None:
            self.on_error(err.name())
            self.on_commit({}, f"{err.name()} ({err.str()})")
            return
        self.on_commit(
            {
                (tp.topic, tp.partition): tp.offset
                for tp in tps
                if tp.error is None and tp.offset >= 0
            },
            None,
        )


class EndOffsets:
    """The watched partitions' end and start offsets, asked of the broker every `interval_s` by a
    thread of its own (ListOffsets, one request each for all partitions).

    The lag gauge is computed from these, not from the watermarks the fetcher caches: those go
    stale while its queue is full, which showed half the real lag while a backlog grew.
    """

    def __init__(self, conf: dict[str, Any], interval_s: float = 1.0) -> None:
        self._admin = AdminClient(_routed(conf))
        self.interval_s = interval_s
        #: partition -> end offset (high watermark) and start offset (low watermark), last read
        self.latest: Offsets = {}
        self.earliest: Offsets = {}
        self._watched: list[Partition] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tickcast-end-offsets", daemon=True)
        self._thread.start()

    def watch(self, partitions: list[Partition]) -> None:
        self._watched = list(partitions)

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            watched = self._watched
            if not watched:
                continue
            try:
                latest = self._ask(watched, OffsetSpec.latest())  # type: ignore[no-untyped-call]
                missing = [p for p in watched if p not in self.earliest]
                earliest = (
                    self._ask(missing, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
                    if missing
                    else {}
                )
            except (KafkaException, TimeoutError) as exc:  # the gauge keeps its last value
                log.debug("end offsets not read: %s", exc)
                continue
            self.latest = latest
            if earliest:
                self.earliest = {**self.earliest, **earliest}

    def _ask(self, partitions: list[Partition], spec: OffsetSpec) -> Offsets:
        futures = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in partitions}, request_timeout=5
        )
        return {(tp.topic, tp.partition): f.result(timeout=10).offset for tp, f in futures.items()}


class DeliveryLatch:
    """Counts a batch's outstanding produces and keeps its first delivery error.

    librdkafka calls the `on_*` methods from `poll`/`flush` on the caller's thread; the lock is for
    the metrics thread reading `pending`, not for librdkafka.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0
        self.error: str | None = None
        #: dead letters the broker refused for good, as "reason source-offset: error"
        self.undeliverable: list[str] = []

    def sent(self, n: int = 1) -> None:
        with self._lock:
            self.pending += n

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        with self._lock:
            self.pending -= 1
            if err is not None and self.error is None:
                self.error = f"{err.name()} ({err.str()})"

    def on_dead_letter(self, err: KafkaError | None, msg: Message) -> None:
        """A dead letter's report: one the broker can never take is skipped, not a failure."""
        if err is not None and err.code() in _UNDELIVERABLE:
            with self._lock:
                self.pending -= 1
                self.undeliverable.append(_dead_letter_name(msg, err))
            return
        self.on_delivery(err, msg)

    def unsent(self, what: str) -> None:
        """A produce refused before it was queued (counted by `sent` already)."""
        with self._lock:
            self.pending -= 1
            self.undeliverable.append(what)


def _dead_letter_name(msg: Message, err: KafkaError) -> str:
    offset = b""
    for name, value in cast("list[tuple[str, str | bytes | None]]", msg.headers() or []):
        if name == "source.offset" and value is not None:
            offset = value if isinstance(value, bytes) else value.encode()
    return f"source-offset={offset.decode(errors='replace')} error={err.name()}"


class Detached:
    """One blocking librdkafka call at a time on a daemon thread of its own, for calls that
    librdkafka may not return from in time: the caller waits on the Future with its own timeout
    and stays free to serve signals and its deadline. A daemon thread, not an executor's: an
    executor's threads are joined at interpreter exit, which a call that never returns would
    block."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Future[None], Callable[[], None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def start(self, call: Callable[[], None]) -> Future[None]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        future: Future[None] = Future()
        self._calls.put((future, call))
        return future

    def retire(self) -> None:
        """The thread ends once the call in hand (if any) returns."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            try:
                call()
            except BaseException as exc:  # handed to the caller, raised there
                future.set_exception(exc)
            else:
                future.set_result(None)
            del future, call, item  # the producer goes with its last call, not with the thread


class Sink:
    """The producer. Transactional when given a transactional id; `renew` replaces it after a
    fatal error (a transactional producer is unusable after one)."""

    def __init__(
        self,
        conf: dict[str, Any],
        init_timeout_s: float = 30.0,
        *,
        factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._conf = conf
        self._init_timeout_s = init_timeout_s
        self._factory = factory
        self.transactional = "transactional.id" in conf
        self._producer = self._new()
        #: the producer's calls that librdkafka may not return from in time (send_offsets)
        self._detached = Detached(f"tickcast-{conf.get('client.id', 'producer')}-txn")
        #: the open transaction's send_offsets call, until its caller has seen it finish
        self._offsets_call: Future[None] | None = None
        #: monotonic time after which produce() stops waiting for room in a full queue
        self.stop_deadline = math.inf

    def _new(self, init_timeout_s: float | None = None) -> Producer:
        producer = self._factory(_routed(self._conf))
        if self.transactional:
            try:
                producer.init_transactions(init_timeout_s or self._init_timeout_s)
            except KafkaException as exc:
                raise failure(exc, "init transactions") from None
        return producer

    def renew(self, init_timeout_s: float | None = None) -> None:
        """A new producer in place of one that hit a fatal error (KafkaFailure if it cannot
        register its transactional id within `init_timeout_s`; the old one is kept then)."""
        old, self._producer = self._producer, self._new(init_timeout_s)
        # A call the old producer never returned from keeps its thread (and the old producer)
        # until librdkafka lets go; the new producer's calls get a thread of their own.
        self._detached.retire()
        self._detached = Detached(self._detached.name)
        self._offsets_call = None
        # What the old one still holds is redone through the rewind; destroying it with
        # undelivered messages would block until message.timeout.ms. A producer in a fatal state
        # may refuse even that (its calls raise): it is dropped all the same.
        with contextlib.suppress(KafkaException):
            old.purge(in_queue=True, in_flight=True, blocking=False)
        with contextlib.suppress(KafkaException):
            old.flush(0)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Queue one message, waiting for room when librdkafka's local queue is full; raises
        KafkaFailure when the client refuses the message itself (too large, say)."""
        # The client's stubs want a list of (str, str | bytes | None); ours holds bytes only.
        wire_headers = cast("list[tuple[str, str | bytes | None]] | None", headers)
        producer = self._producer
        while True:
            try:
                if on_delivery is None:
                    producer.produce(topic, value=value, key=key, headers=wire_headers)
                else:
                    producer.produce(
                        topic, value=value, key=key, headers=wire_headers, on_delivery=on_delivery
                    )
                return
            except BufferError:
                # Full: the broker has been away for a while. Serving delivery reports is what
                # frees the queue, which can take until message.timeout.ms; a stop does not wait.
                if time.monotonic() >= self.stop_deadline:
                    raise KafkaFailure(
                        f"produce to {topic}: the local queue is still full at the stop deadline",
                        "_QUEUE_FULL",
                        retriable=True,
                    ) from None
                producer.poll(0.05)
            except KafkaException as exc:
                raise failure(exc, f"produce to {topic}") from None

    def stop_by(self, deadline: float) -> None:
        """A stop was requested: produce() gives up waiting for queue room at `deadline`."""
        self.stop_deadline = deadline

    def poll(self, timeout: float = 0.0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for every delivery report; returns how many are still due."""
        return int(self._producer.flush(timeout))

    def send_offsets(
        self, offsets: Mapping[Partition, int], group_metadata: object, timeout: float
    ) -> None:
        """Add a batch's input offsets to the open transaction, waiting at most `timeout`.

        librdkafka does not keep this call's timeout while the group coordinator is down
        (confluentinc/librdkafka#5456: it waited on a condition variable for as long as the broker
        was away, where no signal handler can run). So the call runs on a thread of its own and
        this waits for it at most `timeout`; then it raises a retriable timeout, and calling again
        waits for the same call (librdkafka's contract for a timed-out call is to repeat it)."""
        producer = self._producer
        call = self._offsets_call
        if call is None:
            call = self._offsets_call = self._detached.start(
                lambda: producer.send_offsets_to_transaction(
                    _offset_tps(offsets), group_metadata, timeout
                )
            )
        try:
            call.result(timeout)
        except FutureTimeout:
            raise KafkaFailure(
                f"send offsets to the transaction: no answer within {timeout:.1f} s",
                "_TIMED_OUT",
                retriable=True,
            ) from None
        except KafkaException as exc:
            raise failure(exc, "send offsets to the transaction") from None
        finally:
            if call.done():
                self._offsets_call = None

    def commit(self, timeout: float) -> None:
        """Commit the open transaction (a timed-out call may be repeated to resume it)."""
        try:
            self._producer.commit_transaction(timeout)
        except KafkaException as exc:
            raise failure(exc, "commit transaction") from None

    def close(self) -> None:
        """Drop whatever is still queued: destroying a producer with undelivered messages would
        block until message.timeout.ms (minutes) when the broker is gone. What was not delivered
        is not committed, and is redone after the restart."""
        with contextlib.suppress(KafkaException):
            self._producer.purge(in_queue=True, in_flight=True, blocking=False)
        with contextlib.suppress(KafkaException):
            self._producer.flush(0)

    def begin(self) -> None:
        self._end_offsets_call("begin transaction")
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise failure(exc, "begin transaction") from None

    def _end_offsets_call(self, doing: str) -> None:
        """A send_offsets call belongs to its transaction: its result is never taken by the
        next one. One still inside librdkafka blocks every other transactional call (librdkafka
        answers "conflicting call in progress" until it returns, which may be never), so the
        producer must be replaced."""
        call = self._offsets_call
        if call is not None and not call.done():
            raise KafkaFailure(
                f"{doing}: librdkafka has not returned from send_offsets",
                "_CONFLICT",
                fatal=True,
            )
        self._offsets_call = None

    def abort(self, timeout: float) -> None:
        self._end_offsets_call("abort transaction")
        try:
            self._producer.abort_transaction(timeout)
        except KafkaException as exc:
            raise failure(exc, "abort transaction") from None


def read_ranges(
    conf: dict[str, Any], ranges: Mapping[Partition, tuple[int, int]], stall_s: float = 30.0
) -> Iterator[list[Record]]:
    """The records of each partition's [start, end), in batches, read by a consumer of its own
    (assigned, not subscribed: it never joins a group nor commits). Raises KafkaFailure when no
    progress is made for `stall_s`."""
    reader = Consumer(_routed({**conf, "enable.auto.commit": False}))
    reader.assign([TopicPartition(t, p, start) for (t, p), (start, _) in ranges.items()])
    open_ranges = dict(ranges)
    idle_since = time.monotonic()
    try:
        while open_ranges:
            records = [
                r
                for r in _to_records(reader.consume(num_messages=1000, timeout=0.5), lambda c: None)
                if (r.topic, r.partition) in open_ranges
                and r.offset < open_ranges[(r.topic, r.partition)][1]
            ]
            if records:
                idle_since = time.monotonic()
                yield records
            # Done with a partition once its position reaches the end (control records and
            # aborted transactions have offsets but no messages, so compare positions).
            for tp in reader.position(_tps(open_ranges)):
                if tp.offset >= open_ranges[(tp.topic, tp.partition)][1]:
                    del open_ranges[(tp.topic, tp.partition)]
            if open_ranges and time.monotonic() - idle_since > stall_s:
                raise KafkaFailure(
                    f"no progress reading {sorted(open_ranges)} for {stall_s:.0f} s", "stalled"
                )
    finally:
        reader.close()


class _Lines(logging.Handler):
    """Keeps a client's log lines (librdkafka tells why a connection closed in its log, not
    always through error_cb) and passes them on at debug level (-v)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        log.debug("startup check: %s", line)


def check_reachable(settings: Settings, timeout: float = 10.0) -> None:
    """Fail at start with one line when no broker answers: the address, and the reason when it is
    the client's settings (properties librdkafka refuses: ConfigError naming the key; a failed
    TLS handshake or SASL authentication, or TLS spoken to a plaintext port or the reverse:
    UnreachableError naming the keys to check)."""
    errors: list[KafkaError] = []
    # Its connection errors become the one line below; they are not logged twice.
    lines = _Lines()
    startup_log = logging.Logger("librdkafka.startup", logging.DEBUG)  # not in the tree
    startup_log.addHandler(lines)
    conf: dict[str, Any] = {
        **settings.kafka.librdkafka_common(),
        "socket.timeout.ms": 3000,
        "logger": startup_log,
        "client.id": "tickcast-admin",
        "error_cb": errors.append,
    }
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:
        raise refused_settings(settings, exc) from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            detail = exc.args[0].str() if exc.args else str(exc)
        admin.poll(0)  # serves error_cb: why the connection failed
        why = _security_failure(settings, [e.str() for e in errors] + lines.lines)
        if why or time.monotonic() >= deadline:
            break
    raise UnreachableError(
        f"cannot reach Kafka at {settings.kafka.bootstrap_servers} (kafka.bootstrap_servers): "
        f"{why or detail}"
    )


def refused_settings(settings: Settings, exc: KafkaException) -> ConfigError:
    """librdkafka refused a client property (unknown, or a bad value): the key it came from."""
    detail = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
    found = re.search(r'property:? "([^"]+)"', detail)
    prop = found.group(1) if found else ""
    # An alias (linger.ms) is reported under its canonical name (queue.buffering.max.ms).
    known = prop in settings.kafka.librdkafka_common()
    key = settings.kafka.key_of(prop) if known else "kafka.client"
    return ConfigError(f"config error: {key}: librdkafka refused it: {detail}")


def _security_failure(settings: Settings, reports: list[str]) -> str | None:
    """The reason, with the keys to check, when a connection failed on TLS or SASL (from the
    client's errors and log lines); None for anything else (a broker that does not answer is
    retried until the timeout)."""
    key = settings.kafka.key_of
    for report in reports:
        # a log line: "FAIL [client] [thrd:...]: what happened"
        text = re.sub(r"^\w+ \[[^\]]*\] \[[^\]]*\]: ", "", report)
        if "Authentication failed" in text or "SASL authentication error" in text:
            return (
                f"SASL authentication failed; check {key('sasl.mechanism')},"
                f" {key('sasl.username')} and {key('sasl.password')}: {text}"
            )
        if "OAUTHBEARER" in text or "OIDC" in text or "token endpoint" in text.lower():
            return (
                "OAUTHBEARER token not obtained; check"
                f" {key('sasl.oauthbearer.token.endpoint.url')},"
                f" {key('sasl.oauthbearer.client.id')} and"
                f" {key('sasl.oauthbearer.client.secret')}: {text}"
            )
        if "wrong version number" in text or (
            # a TLS listener closes a connection whose first bytes are not a TLS handshake
            "APIVERSION_QUERY" in text
            and "Disconnected" in text
            and not settings.kafka.security_protocol.endswith("SSL")
        ):
            return (
                f"the broker does not speak {settings.kafka.security_protocol} on this port;"
                f" check {key('security.protocol')}: {text}"
            )
        if "SSL handshake failed" in text or "certificate verify failed" in text:
            return (
                f"TLS handshake failed; check {key('ssl.ca.location')} (the CA that signed the"
                f" broker's certificate) and {key('ssl.endpoint.identification.algorithm')}: {text}"
            )
    return None


#: librdkafka's default `message.max.bytes`: the producer refuses larger messages itself
PRODUCER_MAX_MESSAGE_BYTES = 1_000_000
#: room left in a dead letter for its key (cut to 1 KiB), headers and record overhead
_DEAD_LETTER_HEADROOM = 4096


def dead_letter_limit(settings: Settings, topic: str) -> int:
    """How large a dead letter's value may be for the broker and the client to take it: the
    topic's `max.message.bytes` (asked of the broker) or the producer's limit, whichever is lower,
    less room for the key and headers."""
    broker_max = 1_048_588  # the broker's default, if the topic's own cannot be read
    admin = AdminClient(_routed(settings.kafka.librdkafka_common()))
    try:
        futures = admin.describe_configs([ConfigResource("topic", topic)])
        entries = next(iter(futures.values())).result(timeout=10)
        broker_max = int(entries["max.message.bytes"].value)
    except (KafkaException, KeyError, ValueError, TypeError) as exc:
        log.warning("max.message.bytes of %s unknown (%s); assuming %d", topic, exc, broker_max)
    return max(1024, min(broker_max, PRODUCER_MAX_MESSAGE_BYTES) - _DEAD_LETTER_HEADROOM)


def ensure_topics(
    settings: Settings, names: Iterable[str], partitions: int | None = None
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AdminClient(_routed(settings.kafka.librdkafka_common()))
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    count = partitions or settings.topics.partitions
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=count, replication_factor=-1) for n in wanted]
    )
    for _name, fut in futures.items():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise failure(exc, f"create topic {_name}") from None
    log.info("created topics %s partitions=%d", ",".join(wanted), count)
    return wanted


def delete_topics(settings: Settings, names: Iterable[str]) -> None:
    """Delete topics a demo or benchmark made (a broker slows down with thousands of partitions)."""
    admin = AdminClient(_routed(settings.kafka.librdkafka_common()))
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in dict.fromkeys(names) if n in existing]
    if not doomed:
        return
    for name, fut in admin.delete_topics(doomed, operation_timeout=30).items():
        try:
            fut.result(timeout=60)
        except KafkaException as exc:
            log.warning("could not delete topic %s: %s", name, exc)


class TopicTail:
    """Reads one topic from its end (or its beginning), for `tickcast tail`.

    Without a group it assigns every partition itself and never subscribes nor commits, so it
    leaves no consumer group behind on the broker (librdkafka still wants a group.id to build a
    consumer; the name is never sent). With `group` it subscribes in that group and resumes from
    the group's committed offsets (committing as it goes), like any consumer of the group.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        from_beginning: bool = False,
        group: str | None = None,
        wait_s: float = 10.0,
    ) -> None:
        partitions = topic_partitions(settings, topic, wait_s)
        conf: dict[str, Any] = {
            **settings.kafka.librdkafka_common(),
            "group.id": group or "tickcast-tail-unused",
            "enable.auto.commit": group is not None,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
        }
        self._consumer = Consumer(_routed(conf))
        if group is not None:
            self._consumer.subscribe([topic])
        else:
            from confluent_kafka import OFFSET_BEGINNING, OFFSET_END

            start = OFFSET_BEGINNING if from_beginning else OFFSET_END
            self._consumer.assign([TopicPartition(topic, p, start) for p in partitions])

    def consume(self, max_records: int, timeout: float) -> list[Record]:
        return _to_records(
            self._consumer.consume(num_messages=max_records, timeout=timeout), lambda code: None
        )

    def close(self) -> None:
        self._consumer.close()


def topic_partitions(settings: Settings, topic: str, wait_s: float = 10.0) -> list[int]:
    """The partitions of `topic`, asked of the broker within `wait_s`: UnreachableError naming
    the address when no broker answers, KafkaFailure when the topic does not exist."""
    address = settings.kafka.bootstrap_servers
    try:
        admin = AdminClient(
            _routed({**settings.kafka.librdkafka_common(), "socket.timeout.ms": 3000})
        )
    except KafkaException as exc:
        raise refused_settings(settings, exc) from None
    try:
        # All topics, not list_topics(topic=...): asking for one by name can auto-create it.
        metadata = admin.list_topics(timeout=wait_s)
    except KafkaException as exc:
        raise UnreachableError(
            f"cannot reach Kafka at {address} (kafka.bootstrap_servers) within {wait_s:.0f} s: "
            f"{exc.args[0].str() if exc.args else exc}"
        ) from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise KafkaFailure(f"topic {topic!r} does not exist on {address}", "UNKNOWN_TOPIC")
    return sorted(found.partitions)

"""All of tickcast's Prometheus metrics in one object, and the HTTP endpoints that serve them.

The registry is injected, so tests build a fresh one; the service uses its own (not the global
default), so nothing else in the process leaks into /metrics. The standard process_*, python_info
and python_gc_* collectors are registered on it, beside tickcast_build_info{version}.

Latency histograms reach an hour: in a backlog a tick waits minutes for its forecast, and buckets
that stopped at 2.5 s put every such wait in +Inf (p50 and p99 both read 2.5).

    /metrics   prometheus_client's own exposition: the Prometheus text format, or OpenMetrics
               when the scraper asks for it, gzip when it accepts it, `name[]` to filter
    /healthz   200 while the process loop is alive
    /readyz    200 when the model is loaded, Redis answers and partitions are assigned; else 503
               with the reasons
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream import version

if TYPE_CHECKING:
    from stream.checkpoint import Batch
    from stream.contracts import Forecast, Record, Score
    from stream.pipeline import BatchResult

PREFIX = "tickcast"

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Stage and model-call times: milliseconds normally, seconds while Redis or the broker stalls.
_STAGES = (*_FAST, 5.0, 10.0, 30.0, 60.0)
#: Tick to forecast: milliseconds when keeping up, up to an hour when draining a backlog.
_BACKLOG = (*_FAST, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


#: How prometheus_client writes a Histogram's `le` (0.5 -> "0.5", 1 -> "1.0"); untyped there.
_format_bound = cast("Callable[[float], str]", floatToGoString)


class BulkHistogram(Collector):
    """A label-less Prometheus histogram fed a whole batch of observations at once.

    `Histogram.observe` takes a lock and walks the buckets per value: for one observation per
    forecast, thousands a second, that was most of the metrics cost of a batch. Here a batch is
    one searchsorted and one bincount. Exposed exactly as a `Histogram` with the same buckets.
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        if not values.size:
            return
        # Bucket `le` b counts values <= b: the first bound >= the value.
        slots = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(slots, minlength=self._counts.size)
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        edges = [*(_format_bound(b) for b in self._bounds), "+Inf"]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric(
            [], [(e, float(c)) for e, c in zip(edges, cumulative, strict=True)], total
        )
        yield family


#: the `symbol` label of the scores of every symbol not named in scoring.symbols (no symbol
#: can be called this: `_` is not in a symbol's alphabet)
OTHER_SYMBOLS = "_other"


class ScoreMetrics(Collector):
    """Live scores (stream/scoring.py) per (model_version, symbol), summed per batch.

    `symbol` is the symbol's own name only for the symbols of `scoring.symbols`, `_other` for
    the rest: the cardinality is bounded by the config, never by the feed. Sums and counts, so
    the rolling figures are PromQL ratios over any window (deploy/grafana, deploy/prometheus):

        MAE       rate(tickcast_score_abs_error_sum) / rate(tickcast_score_abs_error_count)
        RMSE      sqrt(rate(tickcast_score_squared_error_sum) / rate(..._count))
        MASE      rate(tickcast_score_abs_error_sum)
                    / rate(tickcast_score_persistence_abs_error_sum)  (relative to persistence)
        coverage  rate(tickcast_score_interval_hits_total) / rate(tickcast_scored_total),
                  against tickcast_score_interval{model_version}, the nominal level
    """

    _SUMS = (
        ("abs_error", "Absolute error of the median forecast, in price units"),
        ("squared_error", "Squared error of the median forecast"),
        (
            "persistence_abs_error",
            "Absolute error of persistence (the last price) on the same step",
        ),
        ("pinball_loss", "Pinball loss, the mean over the model's quantiles, in price units"),
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.symbols: frozenset[str] = frozenset()
        #: (model_version, symbol label) -> count, hits, then the sums in _SUMS' order
        self._totals: dict[tuple[str, str], list[float]] = {}
        self._interval: dict[str, float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def record(self, scores: Sequence[Score]) -> None:
        named = self.symbols
        batch: dict[tuple[str, str], list[float]] = {}
        interval: dict[str, float] = {}
        for s in scores:
            key = (s.model_version, s.symbol if s.symbol in named else OTHER_SYMBOLS)
            row = batch.get(key)
            if row is None:
                row = batch[key] = [0.0] * 6
                interval[s.model_version] = s.interval
            row[0] += 1
            row[1] += s.hit
            row[2] += s.abs_error
            row[3] += s.squared_error
            row[4] += s.persistence_abs_error
            row[5] += s.pinball_loss
        with self._lock:
            self._interval.update(interval)
            for key, row in batch.items():
                total = self._totals.setdefault(key, [0.0] * 6)
                for i, v in enumerate(row):
                    total[i] += v

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | SummaryMetricFamily]:
        labels = ["model_version", "symbol"]
        with self._lock:
            totals = {k: list(v) for k, v in self._totals.items()}
            interval = dict(self._interval)
        scored = CounterMetricFamily(
            f"{PREFIX}_scored", "Forecasts scored by their outcome", labels=labels
        )
        hits = CounterMetricFamily(
            f"{PREFIX}_score_interval_hits",
            "Scored forecasts whose outcome fell inside the interval",
            labels=labels,
        )
        sums = [
            SummaryMetricFamily(f"{PREFIX}_score_{name}", doc, labels=labels)
            for name, doc in self._SUMS
        ]
        for (model, symbol), row in sorted(totals.items()):
            scored.add_metric([model, symbol], row[0])
            hits.add_metric([model, symbol], row[1])
            for family, value in zip(sums, row[2:], strict=True):
                family.add_metric([model, symbol], int(row[0]), value)
        level = GaugeMetricFamily(
            f"{PREFIX}_score_interval",
            "The nominal level of the scored model's interval (e.g. 0.8)",
            labels=["model_version"],
        )
        for model, value in sorted(interval.items()):
            level.add_metric([model], value)
        yield scored
        yield hits
        yield from sums
        yield level


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        #: the served model's version, set by set_model; labels the inference metrics
        self.model_version = ""

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

        def hist(
            name: str, doc: str, labels: tuple[str, ...] = (), buckets: tuple[float, ...] = _FAST
        ) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, registry=registry, buckets=buckets)

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.build_info = gauge(
            "build_info", "The running tickcast's version (value 1)", ("version",)
        )
        self.build_info.labels(version=version()).set(1)

        self.consumer_lag = gauge(
            "consumer_lag", "High watermark minus committed offset", ("topic", "partition")
        )
        self.consumer_lag_seconds = gauge(
            "consumer_lag_seconds",
            "Age of the oldest unprocessed tick (0 when caught up)",
            ("topic", "partition"),
        )
        self.ticks = counter("ticks", "Ticks by outcome", ("outcome",))
        self.forecasts = counter("forecasts", "Forecasts published", ("cached",))
        self.forecasts_dropped = counter(
            "forecasts_dropped", "Forecasts not published", ("reason",)
        )
        self.cache_requests = counter("cache_requests", "Result cache lookups", ("result",))
        self.dead_letters = counter(
            "dead_letters", "Messages sent to the dead-letter topic", ("reason",)
        )
        self.inference_batch_size = hist(
            "inference_batch_size", "Windows per model call", ("model_version",), buckets=_SIZES
        )
        self.inference_seconds = hist(
            "inference_seconds", "Model call duration", ("model_version",), buckets=_STAGES
        )
        self.inference_errors = counter(
            "inference_errors", "Model calls that raised", ("model_version",)
        )
        self.batch_seconds = hist("batch_seconds", "Batch time by stage", ("stage",), _STAGES)
        self.tick_to_forecast_seconds = BulkHistogram(
            f"{PREFIX}_tick_to_forecast_seconds",
            "Tick produce time to forecast delivery",
            _BACKLOG,
            registry,
        )
        self.rebalances = counter("rebalances", "Partition assignment changes", ("kind",))
        self.assigned_partitions = gauge(
            "assigned_partitions", "Partitions assigned to this consumer"
        )
        self.model_info = gauge("model_info", "The served model version (value 1)", ("version",))
        self.model_reloads = counter("model_reloads", "Model artifacts loaded after start")
        self.redis_errors = counter("redis_errors", "Redis calls that failed")
        self.kafka_errors = counter("kafka_errors", "Kafka client errors", ("code",))
        self.batches = counter("batches", "Batches committed")
        self.topic_recreated = counter(
            "topic_recreated", "Input partitions found recreated (started afresh)"
        )
        self.state_losses = counter(
            "state_losses", "Batches that found Redis had lost their windows (then rebuilt)"
        )
        # librdkafka's own statistics (stream.kafka.ClientEvents), every few seconds per client
        self.kafka_broker_rtt_seconds = gauge(
            "kafka_broker_rtt_seconds", "Mean broker round trip, by client", ("client", "broker")
        )
        self.kafka_queued_messages = gauge(
            "kafka_queued_messages", "Messages in the client's queues", ("client",)
        )
        #: live scores; `scores.symbols` names the symbols with a series of their own
        self.scores = ScoreMetrics(registry)

        # Pre-create the label sets operators alert on, so a quiet series reads 0, not absent.
        for outcome in (
            "processed",
            "invalid",
            "late",
            "duplicate",
            "replayed",
            "too_old",
            "warming",
            "rebuilt",
        ):
            self.ticks.labels(outcome=outcome)
        for cached in ("true", "false"):
            self.forecasts.labels(cached=cached)
        for result in ("hit", "miss"):
            self.cache_requests.labels(result=result)

    def set_model(self, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_version = version
        # The new version's inference series read 0 from now on, not absent until its first call.
        for family in (self.inference_errors, self.inference_seconds, self.inference_batch_size):
            family.labels(model_version=version)

    def record_inference_error(self, model_version: str | None = None) -> None:
        """A model call raised (default: the version set_model named)."""
        self.inference_errors.labels(model_version=model_version or self.model_version).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def kafka_stats(self, client: str, rtt_s: dict[str, float], queued: int) -> None:
        for broker, seconds in rtt_s.items():
            self.kafka_broker_rtt_seconds.labels(client=client, broker=broker).set(seconds)
        self.kafka_queued_messages.labels(client=client).set(queued)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop a partition's series once it is no longer assigned here."""
        for gauge in (self.consumer_lag, self.consumer_lag_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

    def record_batches(self, done: Sequence[Batch], now_ms: float) -> None:
        """Count batches whose output is delivered (at-least-once) or committed (exactly-once)."""
        for batch in done:
            if batch.output is not None:
                self.record_batch(batch.output, batch.records, batch.opened_at, now_ms)
            if batch.latch.undeliverable:
                self.kafka_errors.labels(code="dead_letter_undeliverable").inc(
                    len(batch.latch.undeliverable)
                )

    def record_batch(
        self,
        result: BatchResult,
        records: Sequence[Record],
        opened_at: float,
        now_ms: float,
        *,
        model_version: str | None = None,
    ) -> None:
        """Count one batch's outcomes, cache use, stage times and tick-to-forecast times.

        `model_version`: the version that served the batch's model call, the label of the
        inference metrics; default, the version its forecasts carry (one model computes a whole
        batch), else the one set_model named last."""
        for outcome, n in result.counts.items():
            if n:
                self.ticks.labels(outcome=outcome).inc(n)
        cached = sum(1 for f in result.forecasts if f.cached)
        if cached:
            self.forecasts.labels(cached="true").inc(cached)
        if len(result.forecasts) - cached:
            self.forecasts.labels(cached="false").inc(len(result.forecasts) - cached)
        if result.cache_hits:
            self.cache_requests.labels(result="hit").inc(result.cache_hits)
        if result.cache_misses:
            self.cache_requests.labels(result="miss").inc(result.cache_misses)
        for r in result.dead_letters:
            self.dead_letters.labels(reason=r.reason).inc()
        if result.non_finite:
            self.forecasts_dropped.labels(reason="non_finite").inc(result.non_finite)
        if result.scores:
            self.scores.record(result.scores)
        if result.inference_batch_size:
            served_by = model_version or (
                result.forecasts[0].model_version if result.forecasts else self.model_version
            )
            self.inference_batch_size.labels(model_version=served_by).observe(
                result.inference_batch_size
            )
            self.inference_seconds.labels(model_version=served_by).observe(
                result.stage_seconds.get("inference", 0.0)
            )
        for stage, seconds in result.stage_seconds.items():
            self.batch_seconds.labels(stage=stage).observe(seconds)
        self.batch_seconds.labels(stage="total").observe(time.perf_counter() - opened_at)
        self.batches.inc()
        if result.forecasts:
            # Ingest to publish: from the tick's Kafka timestamp to now (all delivered).
            sent = np.array(tick_timestamps(records, result.forecasts), dtype=np.float64)
            sent = sent[sent > 0]
            self.tick_to_forecast_seconds.observe_many(np.maximum(now_ms - sent, 0.0) / 1000.0)


def tick_timestamps(records: Sequence[Record], forecasts: Sequence[Forecast]) -> list[int]:
    """The Kafka timestamp of the record each forecast's tick came from (0 if none is found).

    The pipeline gives its forecasts in input order, so one walk along the records finds them
    all, without a dict of (partition, offset) tuples per record (held equal to that lookup,
    tests/unit/test_metrics_stamps.py); forecasts in any other order fall back to it."""
    out: list[int] = []
    append = out.append
    walk = iter(records)
    for f in forecasts:
        source = f.source
        partition, offset = source.partition, source.offset
        for r in walk:
            if r.offset == offset and r.partition == partition:
                append(r.timestamp)
                break
        else:
            stamps = {(r.partition, r.offset): r.timestamp for r in records}
            return [stamps.get((f.source.partition, f.source.offset), 0) for f in forecasts]
    return out


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A running service's tickcast_* samples, keyed by name with labels (demo and benchmarks)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{PREFIX}_") and " " in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@dataclass
class Health:
    """What /healthz and /readyz report; the loop and the Kafka clients' callbacks set these, the
    HTTP thread only reads them.

    /healthz is a heartbeat: the loop `beat()`s on every turn (and while it waits for Redis), so
    it fails when the loop is stuck, not merely when the process lives. /readyz names the
    dependency that is missing, with its address.
    """

    model_loaded: bool = False
    redis_ok: bool = False
    assigned: int = 0
    stopping: bool = False
    #: no broker answers (librdkafka's all-brokers-down), with the address and error
    kafka_down: str = ""
    redis_address: str = ""
    #: the Schema Registry did not answer (format.kind), with why
    registry_down: str = ""
    #: seconds without a heartbeat after which /healthz fails
    stall_after_s: float = 60.0
    last_beat: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds since the loop last made progress, if that is over the bound; else 0."""
        idle = time.monotonic() - self.last_beat
        return idle if idle > self.stall_after_s else 0.0

    def not_ready_reasons(self) -> list[str]:
        reasons = []
        if not self.model_loaded:
            reasons.append("model not loaded")
        if self.kafka_down:
            reasons.append(f"kafka unreachable: {self.kafka_down}")
        if not self.redis_ok:
            at = f" at {self.redis_address}" if self.redis_address else ""
            reasons.append(f"redis unreachable{at}")
        if self.registry_down:
            reasons.append(f"schema registry unreachable: {self.registry_down}")
        if self.assigned == 0:
            reasons.append("no partitions assigned")
        if self.stopping:
            reasons.append("shutting down")
        return reasons


def serve(metrics: Metrics, health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Start the endpoints on a daemon thread; returns the server (call shutdown() to stop).

    /metrics is prometheus_client's own `MetricsHandler` on the service's registry (its content
    negotiation, encoders and compression); the two probes and the 404 for any other path sit
    beside it. It writes no access log: scrapes every few seconds would drown the service log.
    """

    class Handler(MetricsHandler):
        registry = metrics.registry

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                super().do_GET()
            elif path == "/healthz":
                stalled = health.stalled_for()
                if stalled:
                    self._send_text(503, f"processing loop stalled for {stalled:.0f} s\n")
                else:
                    self._send_text(200, "ok\n")
            elif path == "/readyz":
                reasons = health.not_ready_reasons()
                if reasons:
                    self._send_text(503, "not ready: " + ", ".join(reasons) + "\n")
                else:
                    self._send_text(200, "ready\n")
            else:
                self._send_text(404, "not found\n")

        def _send_text(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server

"""The metrics object and the health endpoints, on a fresh registry."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

import stream
from stream.contracts import Forecast, Record, Source
from stream.metrics import _FAST, BulkHistogram, Health, Metrics, serve
from stream.pipeline import BatchResult

REQUIRED = [
    "tickcast_consumer_lag",
    "tickcast_ticks_total",
    "tickcast_forecasts_total",
    "tickcast_cache_requests_total",
    "tickcast_dead_letters_total",
    "tickcast_inference_batch_size",
    "tickcast_inference_seconds",
    "tickcast_batch_seconds",
    "tickcast_tick_to_forecast_seconds",
    "tickcast_rebalances_total",
    "tickcast_assigned_partitions",
    "tickcast_model_info",
    "tickcast_model_reloads_total",
    "tickcast_redis_errors_total",
    "tickcast_kafka_errors_total",
    "tickcast_inference_errors_total",
    "tickcast_build_info",
    "process_resident_memory_bytes",
]


def test_every_contract_metric_is_exposed() -> None:
    m = Metrics(CollectorRegistry())
    m.consumer_lag.labels(topic="ticks", partition="0").set(3)
    m.dead_letters.labels(reason="not_json").inc()
    m.rebalances.labels(kind="assign").inc()
    m.kafka_errors.labels(code="x").inc()
    m.batch_seconds.labels(stage="decode").observe(0.001)
    m.set_model("abc")
    text = m.render().decode()
    for name in REQUIRED:
        assert f"\n{name}" in text or text.startswith(name), name


@given(
    batches=st.lists(
        st.lists(
            st.one_of(
                st.sampled_from(_FAST),  # exactly on a bound: counted in that bucket (le)
                st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
            ),
            max_size=50,
        ),
        max_size=5,
    )
)
def test_bulk_histogram_exposes_what_a_histogram_would(batches: list[list[float]]) -> None:
    stock_registry, bulk_registry = CollectorRegistry(), CollectorRegistry()
    stock = Histogram("lat_seconds", "doc", registry=stock_registry, buckets=_FAST)
    bulk = BulkHistogram("lat_seconds", "doc", _FAST, bulk_registry)
    for batch in batches:
        for value in batch:
            stock.observe(value)
        bulk.observe_many(np.asarray(batch, dtype=np.float64))

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        lines = generate_latest(registry).decode().splitlines()
        # _created is the stock histogram's creation time; the sums may differ in the last bit
        pairs = (line.rsplit(" ", 1) for line in lines if not line.startswith("#"))
        return {k: float(v) for k, v in pairs if "_created" not in k}

    a, b = samples(stock_registry), samples(bulk_registry)
    assert a.keys() == b.keys()
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), key


def test_model_info_names_only_the_current_version() -> None:
    m = Metrics(CollectorRegistry())
    m.set_model("old")
    m.set_model("new")
    text = m.render().decode()
    assert 'tickcast_model_info{version="new"} 1.0' in text
    assert 'tickcast_model_info{version="old"}' not in text


def test_two_metrics_objects_do_not_share_state() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.ticks.labels(outcome="processed").inc(5)
    assert 'tickcast_ticks_total{outcome="processed"} 0.0' in b.render().decode()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_endpoints_report_health_and_readiness_reasons() -> None:
    m, h = Metrics(CollectorRegistry()), Health()
    server = serve(m, h, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        assert _get(port, "/healthz") == (200, "ok\n")
        status, body = _get(port, "/readyz")
        assert status == 503
        assert "model not loaded" in body and "redis unreachable" in body
        h.model_loaded, h.redis_ok, h.assigned = True, True, 3
        assert _get(port, "/readyz") == (200, "ready\n")
        h.stopping = True
        assert _get(port, "/readyz")[0] == 503
        status, body = _get(port, "/metrics")
        assert status == 200 and "tickcast_ticks_total" in body
        assert _get(port, "/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def _get_with(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def test_metrics_endpoint_is_prometheus_clients_exposition() -> None:
    """What the library's handler adds over the plain text: OpenMetrics when the scraper asks for
    it (Prometheus does), gzip when it accepts it, and `name[]` filters."""
    m, h = Metrics(CollectorRegistry()), Health()
    m.ticks.labels(outcome="processed").inc(2)
    server = serve(m, h, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        status, headers, body = _get_with(port, "/metrics", {})
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert 'tickcast_ticks_total{outcome="processed"} 2.0' in body.decode()

        _, headers, body = _get_with(
            port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.decode().endswith("# EOF\n")

        _, headers, body = _get_with(port, "/metrics", {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip"
        assert b"tickcast_ticks_total" in gzip.decompress(body)

        _, _, body = _get_with(port, "/metrics?name[]=tickcast_ticks_total", {})
        text = body.decode()
        assert "tickcast_ticks_total" in text and "tickcast_forecasts_total" not in text
    finally:
        server.shutdown()
        server.server_close()


def test_endpoints_write_no_access_log(capfd: pytest.CaptureFixture[str]) -> None:
    server = serve(Metrics(CollectorRegistry()), Health(), "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        for path in ("/metrics", "/healthz", "/readyz", "/nope"):
            _get(port, path)
    finally:
        server.shutdown()
        server.server_close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def _batch(n: int, version: str, sent_ms: float) -> tuple[BatchResult, list[Record]]:
    records = [Record("ticks", 0, o, b"A", b"{}", int(sent_ms)) for o in range(n)]
    forecasts = [
        Forecast("A", o, 1, 1.0, 0.9, 1.1, 0.8, 1.0, version, "h", False, Source("ticks", 0, o), 0)
        for o in range(n)
    ]
    result = BatchResult(forecasts, [], {"processed": n}, inference_batch_size=n)
    result.stage_seconds["inference"] = 0.004
    return result, records


def _samples(m: Metrics) -> dict[str, float]:
    pairs = (
        line.rsplit(" ", 1) for line in m.render().decode().splitlines() if line[:1] not in "#"
    )
    return {k: float(v) for k, v in pairs}


def test_tick_to_forecast_buckets_reach_an_hour() -> None:
    """A backlog's waits land in finite buckets, so p50 and p99 differ and mean something."""
    m = Metrics(CollectorRegistry())
    m.set_model("abc")
    now_ms = 10_000_000.0
    for wait_s in (0.01, 45.0, 900.0, 3000.0):
        result, records = _batch(1, "abc", now_ms - wait_s * 1000)
        m.record_batch(result, records, 0.0, now_ms)
    s = _samples(m)
    bucket = "tickcast_tick_to_forecast_seconds_bucket"
    assert s[f'{bucket}{{le="2.5"}}'] == 1
    assert s[f'{bucket}{{le="60.0"}}'] == 2
    assert s[f'{bucket}{{le="1200.0"}}'] == 3
    assert s[f'{bucket}{{le="3600.0"}}'] == 4 == s[f'{bucket}{{le="+Inf"}}']
    assert 'tickcast_batch_seconds_bucket{le="60.0",stage="total"}' in s


def test_inference_metrics_carry_the_model_version() -> None:
    m = Metrics(CollectorRegistry())
    m.set_model("old")
    result, records = _batch(3, "old", 1.0)
    m.record_batch(result, records, 0.0, 2.0)
    m.set_model("new")  # a hot reload
    # a batch the old model computed, recorded after the reload, still counts for the old one
    m.record_batch(*_batch(2, "old", 1.0), 0.0, 2.0)
    m.record_batch(*_batch(4, "x", 1.0), 0.0, 2.0, model_version="new")
    s = _samples(m)
    assert s['tickcast_inference_batch_size_count{model_version="old"}'] == 2
    assert s['tickcast_inference_batch_size_sum{model_version="old"}'] == 5
    assert s['tickcast_inference_seconds_count{model_version="new"}'] == 1
    assert s['tickcast_inference_batch_size_sum{model_version="new"}'] == 4


def test_inference_errors_count_per_version_and_read_zero_once_a_model_is_set() -> None:
    m = Metrics(CollectorRegistry())
    m.set_model("abc")
    assert _samples(m)['tickcast_inference_errors_total{model_version="abc"}'] == 0
    m.record_inference_error()
    m.record_inference_error("abc")
    assert _samples(m)['tickcast_inference_errors_total{model_version="abc"}'] == 2


def test_process_platform_gc_and_build_info_are_on_the_services_registry() -> None:
    s = _samples(Metrics(CollectorRegistry()))
    assert s["process_resident_memory_bytes"] > 0 and "process_cpu_seconds_total" in s
    assert any(k.startswith("python_info{") for k in s)
    assert any(k.startswith("python_gc_collections_total{") for k in s)
    assert s[f'tickcast_build_info{{version="{stream.version()}"}}'] == 1


def test_lag_seconds_series_go_with_their_partition() -> None:
    m = Metrics(CollectorRegistry())
    m.consumer_lag.labels(topic="ticks", partition="3").set(10)
    m.consumer_lag_seconds.labels(topic="ticks", partition="3").set(4.5)
    m.forget_partition("ticks", 3)
    assert "partition=" not in m.render().decode()

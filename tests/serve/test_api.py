"""The HTTP API in process (FastAPI's TestClient) on the real artifact and a real Redis.

Every validation error is a 422 naming the field (or 413 for an oversize body); the API's
forecast is the stream pipeline's for the same window, bit for bit, cached or not, alone or in a
batch, through the fast lane or FastAPI's own route; the latest forecast of a symbol is the one
the pipeline made for its last window; /readyz names Redis when it is gone.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from stream.cache import ForecastCache
from stream.contracts import Record, decode_forecast, encode_forecast, encode_tick
from stream.pipeline import Pipeline
from stream.predictor import Predictor
from stream.windows import WindowStore
from tests.artifacts import artifacts_root, derived_artifact
from tests.redis_process import RedisProcess
from tests.serve.conftest import fields

pytestmark = pytest.mark.integration

W = 60


def window(seed: int = 0) -> list[float]:
    """60 gold-like prices, different per seed (a fresh window: nothing cached yet)."""
    r = np.random.default_rng(seed)
    return [float(round(1900 * math.exp(x), 2)) for x in np.cumsum(r.normal(0, 0.01, W))]


def post(http: TestClient, path: str, body: Any) -> Any:
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


# ------------------------------------------------------------------ validation


def _locs(response: Any) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prices": window()[:59]}, ["body", "prices"]),  # 59 prices
        ({"prices": [*window(), 1.0]}, ["body", "prices"]),  # 61
        ({"prices": [*window()[:59], -1.0]}, ["body", "prices", 59]),  # negative
        ({"prices": [0.0, *window()[1:]]}, ["body", "prices", 0]),  # zero
        ({"prices": [*window()[:3], "1.5", *window()[4:]]}, ["body", "prices", 3]),  # a string
        ({"prices": [*window()[:3], True, *window()[4:]]}, ["body", "prices", 3]),  # a boolean
        ({"prices": [*window()[:3], None, *window()[4:]]}, ["body", "prices", 3]),
        ({}, ["body", "prices"]),  # missing
        ({"prices": window(), "symbol": "XAU USD"}, ["body", "symbol"]),
        ({"prices": window(), "symbol": "X" * 33}, ["body", "symbol"]),
        ({"prices": window(), "ts": 1.5}, ["body", "ts"]),
        ({"prices": window(), "ts": 2**53}, ["body", "ts"]),
        ({"prices": window(), "colour": "red"}, ["body", "colour"]),  # unknown field
    ],
)
def test_a_bad_window_is_422_naming_the_field(
    api: Callable[..., TestClient], body: Any, loc: list[Any]
) -> None:
    http = api()
    assert loc in _locs(post(http, "/v1/predict", body))
    # the same window inside a batch is named with its position
    good = {"prices": window(1)}
    assert ["body", "windows", 1, *loc[1:]] in _locs(
        post(http, "/v1/predict/batch", {"windows": [good, body]})
    )


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_price_is_422_naming_it(api: Callable[..., TestClient], literal: str) -> None:
    # 60 prices, the first not finite (JSON has no such literal; Python's parser and pydantic's
    # both read it, then the price is refused as not finite)
    text = '{"prices": [' + ", ".join([literal, *map(repr, window()[1:])]) + "]}"
    response = api().post("/v1/predict", content=text, headers={"content-type": "application/json"})
    assert ["body", "prices", 0] in _locs(response)
    assert response.json()["detail"][0]["type"] == "finite_number"


def test_not_json_is_422(api: Callable[..., TestClient]) -> None:
    response = api().post(
        "/v1/predict", content=b'{"prices": [1, 2', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


JSON_TYPES = ("application/json", "application/vnd.tickcast+json")  # the fast lane, FastAPI's route


@pytest.mark.parametrize("content_type", JSON_TYPES)
@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b"[" * 100_000 + b"]" * 100_000, ["body", 0], "json_invalid"),  # deeper than any parser
        (b'{"prices": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", ["body", 0], "json_invalid"),
        (b'{"prices": [1900.5], "symbol": "\xff\xfe"}', ["body", 32], "json_invalid"),
        # an integer Python will not convert (over 4,300 digits) is beyond any float64 too
        (b'{"prices": [' + b"7" * 5_000 + b", 1.5]}", ["body", "prices", 0], "finite_number"),
        (b'{"prices": [' + b"7" * 4_300 + b", 1.5]}", ["body", "prices", 0], "float_type"),
        (b'{"prices": [1.5], "ts": ' + b"7" * 5_000 + b"}", ["body", "ts"], "int_type"),
    ],
)
def test_a_body_python_cannot_parse_is_422_saying_where(
    api: Callable[..., TestClient], body: bytes, loc: list[Any], kind: str, content_type: str
) -> None:
    """Bodies on which Python's JSON parser raises something else than a JSON error (deep
    nesting, bytes that are not UTF-8, huge integers) were 400 "There was an error parsing the
    body": now the README's 422, naming the position or the field (review finding)."""
    http = api()
    headers = {"content-type": content_type}
    single = http.post("/v1/predict", content=body, headers=headers)
    assert single.status_code == 422, single.text
    errors = {(e["type"], tuple(e["loc"])): e["msg"] for e in single.json()["detail"]}
    assert (kind, tuple(loc)) in errors  # (with "too_short" for a field error: one price)
    if kind == "json_invalid":
        assert "JSON decode error: " in errors[(kind, tuple(loc))]  # and why
    in_batch = http.post(
        "/v1/predict/batch", content=b'{"windows": [' + body + b"]}", headers=headers
    )
    assert in_batch.status_code == 422, in_batch.text
    assert kind in {e["type"] for e in in_batch.json()["detail"]}


@pytest.mark.parametrize("content_type", JSON_TYPES)
@pytest.mark.parametrize(
    ("prices", "named"),
    [
        ([5e-324, *window()[1:]], [0]),  # 5e-324 / 1900 is 0: log(0)
        ([*window()[:59], 5e-324], [59]),  # 1900 / 5e-324 is infinite: named at the last price
        ([1e-200, 1e-200, *window()[2:59], 1e200], [0, 1]),  # 1e-400 is 0 in float64
    ],
)
def test_a_window_the_model_cannot_read_is_422_naming_the_price(
    api: Callable[..., TestClient], prices: list[float], named: list[int], content_type: str
) -> None:
    """Every price is finite and above 0, but the model reads log(price / last price), which is
    not finite for these: a 500 before, and one such window failed its whole batch with a 500
    (review finding). Now the window is refused like any invalid one, naming the price."""
    http = api()
    headers = {"content-type": content_type}
    single = http.post("/v1/predict", content=json.dumps({"prices": prices}), headers=headers)
    assert single.status_code == 422, single.text
    assert [e["loc"] for e in single.json()["detail"]] == [["body", "prices", j] for j in named]
    assert {e["type"] for e in single.json()["detail"]} == {"price_ratio"}
    good = {"prices": window(41)}
    batch = {"windows": [good, {"prices": prices}]}
    refused = http.post("/v1/predict/batch", content=json.dumps(batch), headers=headers)
    assert [e["loc"] for e in refused.json()["detail"]] == [
        ["body", "windows", 1, "prices", j] for j in named
    ]
    # the window the model can read, alone, is served (the 422 cost no model call)
    assert post(http, "/v1/predict/batch", {"windows": [good]}).status_code == 200
    # what decides is the ratio, not the size: 5e-324 beside a last price of 1 is log(5e-324)
    assert post(http, "/v1/predict", {"prices": [5e-324, *[1.0] * 59]}).status_code == 200
    assert "model output not finite" not in http.get("/metrics").text.replace("# HELP", "")


@pytest.mark.parametrize("content_type", JSON_TYPES)
def test_a_forecast_beyond_float64_is_422_at_the_last_price(
    api: Callable[..., TestClient], content_type: str
) -> None:
    """A last price at float64's largest, so last price x exp(quantile) overflows: the
    model's output is finite, the forecast price is not: 422 at the last price, not a 500."""
    http = api()
    headers = {"content-type": content_type}
    # float64's largest: any upper quantile above 0 (an interval above the last price) passes it
    prices = [1e308] * 59 + [sys.float_info.max]
    single = http.post("/v1/predict", content=json.dumps({"prices": prices}), headers=headers)
    assert single.status_code == 422, single.text
    (error,) = single.json()["detail"]
    assert (error["type"], error["loc"]) == ("forecast_not_finite", ["body", "prices", 59])
    batch = {"windows": [{"prices": window(42)}, {"prices": prices}]}
    refused = http.post("/v1/predict/batch", content=json.dumps(batch), headers=headers)
    assert refused.status_code == 422, refused.text
    assert [e["loc"] for e in refused.json()["detail"]] == [["body", "windows", 1, "prices", 59]]


def test_too_many_windows_is_422_naming_windows(api: Callable[..., TestClient]) -> None:
    http = api(TICKCAST_SERVE__MAX_BATCH_WINDOWS="3")
    ok = post(http, "/v1/predict/batch", {"windows": [{"prices": window(i)} for i in range(3)]})
    assert ok.status_code == 200, ok.text
    too_many = post(
        http, "/v1/predict/batch", {"windows": [{"prices": window(i)} for i in range(4)]}
    )
    assert _locs(too_many) == [["body", "windows"]]
    assert too_many.json()["detail"][0]["type"] == "too_long"
    assert _locs(post(http, "/v1/predict/batch", {"windows": []})) == [["body", "windows"]]


def test_an_oversize_body_is_413_whether_declared_or_streamed(
    api: Callable[..., TestClient],
) -> None:
    http = api(TICKCAST_SERVE__MAX_BODY_BYTES="4096")
    windows = {"windows": [{"prices": window(i)} for i in range(8)]}  # ~9 KB
    body = json.dumps(windows).encode()
    assert len(body) > 4096
    declared = http.post(
        "/v1/predict/batch", content=body, headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, counted as it is read
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    streamed = http.post(
        "/v1/predict/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413
    # under the limit it is served
    small = json.dumps({"windows": windows["windows"][:2]}).encode()
    assert len(small) < 4096
    ok = http.post("/v1/predict/batch", content=small, headers={"content-type": "application/json"})
    assert ok.status_code == 200
    # both refusals are counted, the one refused from its Content-Length too
    text = http.get("/metrics").text
    assert 'tickcast_api_requests_total{code="413",route="/v1/predict/batch"} 2.0' in text


def test_a_bad_symbol_in_the_path_is_422(api: Callable[..., TestClient]) -> None:
    assert _locs(api().get("/v1/forecasts/" + "X" * 40)) == [["path", "symbol"]]


# ------------------------------------------------------------------ the same forecast


def _pipeline_forecasts(
    client: redis.Redis, prefix: str, predictor: Predictor, prices: dict[str, list[float]]
) -> tuple[list[dict[str, Any]], WindowStore]:
    """What the stream's pipeline publishes for these series (real store, cache and model), and
    its window store."""
    store = WindowStore(client, prefix, size=W, history=500, source_topic="ticks")
    pipeline = Pipeline(
        store,
        ForecastCache(client, prefix, predictor.version, predictor.horizon, ttl_seconds=600),
        predictor,
        source_topic="ticks",
        clock_ms=lambda: 1,
    )
    records = []
    offset = 0
    for i in range(max(len(p) for p in prices.values())):
        for symbol, series in prices.items():
            if i < len(series):
                value = encode_tick(symbol, series[i], 1_700_000_000_000 + i * 60_000)
                records.append(Record("ticks", 0, offset, symbol.encode(), value))
                offset += 1
    out = []
    for start in range(0, len(records), 64):  # batches of the stream's shape
        result = pipeline.process(records[start : start + 64], 65_536)
        out += [json.loads(encode_forecast(f)) for f in result.forecasts]
    return out, store


def _series(seed: int, n: int) -> list[float]:
    r = np.random.default_rng(seed)
    return [float(round(1900 * math.exp(x), 2)) for x in np.cumsum(r.normal(0, 0.01, n))]


def test_the_api_answers_the_pipelines_forecast_bit_for_bit(
    api: Callable[..., TestClient],
    predictor: Predictor,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    series = {"XAUUSD": _series(1, 90), "XAGUSD": _series(2, 75)}
    published, _ = _pipeline_forecasts(redis_client, key_prefix, predictor, series)
    assert len(published) == (90 - W + 1) + (75 - W + 1)
    by_key = {(f["symbol"], f["ts"]): f for f in published}

    cached = api()  # the stream's key prefix: its cache holds every window
    fresh = api(TICKCAST_REDIS__KEY_PREFIX=key_prefix + "-fresh")  # nothing cached
    for symbol, prices in series.items():
        for end in range(W, len(prices) + 1):
            ts = 1_700_000_000_000 + (end - 1) * 60_000
            expected = by_key[(symbol, ts)]
            request = {"prices": prices[end - W : end], "symbol": symbol, "ts": ts}
            for http, was_cached in ((cached, True), (fresh, False)):
                got = post(http, "/v1/predict", request).json()
                assert got["cached"] is was_cached
                assert got["source"] is None
                same = {k: v for k, v in fields(expected).items() if k != "source"}
                assert {k: got[k] for k in same} == same  # floats equal: the same bits
    # the fresh API filled its own cache with the very same outputs
    again = post(fresh, "/v1/predict", {"prices": series["XAUUSD"][:W]}).json()
    assert again["cached"] is True
    assert again["price"] == by_key[("XAUUSD", 1_700_000_000_000 + (W - 1) * 60_000)]["price"]


def test_batch_equals_singles_and_cached_equals_uncached(
    api: Callable[..., TestClient], key_prefix: str
) -> None:
    http = api()
    windows = [window(100 + i) for i in range(37)] + [window(100)]  # one repeated
    batch = post(http, "/v1/predict/batch", {"windows": [{"prices": w} for w in windows]})
    assert batch.status_code == 200
    first = batch.json()["forecasts"]
    assert len(first) == len(windows)
    assert [f["cached"] for f in first] == [False] * len(windows)  # one lookup, before the model
    assert fields(first[0]) == fields(first[-1])

    singles = [post(http, "/v1/predict", {"prices": w}).json() for w in windows]
    assert all(s["cached"] for s in singles)
    assert [fields(s) for s in singles] == [fields(f) for f in first]

    # the model alone, uncached, on another prefix, one window at a time
    fresh = api(TICKCAST_REDIS__KEY_PREFIX=key_prefix + "-fresh")
    for w, f in zip(windows[:5], first, strict=False):
        alone = post(fresh, "/v1/predict", {"prices": w}).json()
        assert alone["cached"] is False
        assert fields(alone) == fields(f)


def test_the_fast_lane_and_fastapis_route_answer_alike(api: Callable[..., TestClient]) -> None:
    """An application/json body takes the fast lane; another JSON media type goes through
    FastAPI's route: the same forecast, and the same errors."""
    http = api()
    w = window(7)
    other = {"content-type": "application/vnd.tickcast+json"}
    request = {"prices": w, "symbol": "XAUUSD", "ts": 5}
    lane = post(http, "/v1/predict", request)
    route = http.post("/v1/predict", content=json.dumps(request), headers=other)
    assert lane.status_code == route.status_code == 200
    assert fields(lane.json()) == fields(route.json())
    assert lane.json()["symbol"] == "XAUUSD" and lane.json()["ts"] == 5
    batch = {"windows": [request, {"prices": window(8)}]}
    lane = post(http, "/v1/predict/batch", batch)
    route = http.post("/v1/predict/batch", content=json.dumps(batch), headers=other)
    assert [fields(f) for f in lane.json()["forecasts"]] == [
        fields(f) for f in route.json()["forecasts"]
    ]
    bad = {"prices": w[:59]}
    assert (
        post(http, "/v1/predict", bad).json()
        == http.post("/v1/predict", content=json.dumps(bad), headers=other).json()
    )
    # no content type at all: FastAPI does not read the body as JSON
    assert http.post("/v1/predict", content=json.dumps(request)).status_code == 422


# ------------------------------------------------------------------ latest forecast


def test_the_latest_forecast_of_a_symbol_is_the_last_one_published(
    api: Callable[..., TestClient],
    predictor: Predictor,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    # 700 ticks with room for 560 in a key: the ring has wrapped
    series = {
        "XAUUSD": _series(3, 700),
        "XAGUSD": _series(4, 61),
        "XAU/USD": _series(6, 61),  # "/" is a symbol character: the path holds it as is
        "WARM": _series(5, 59),
    }
    published, _ = _pipeline_forecasts(redis_client, key_prefix, predictor, series)
    http = api()
    for symbol, path in (
        ("XAUUSD", "XAUUSD"),
        ("XAGUSD", "XAGUSD"),
        ("XAU/USD", "XAU/USD"),
        ("XAU/USD", "XAU%2FUSD"),
    ):
        last = max((f for f in published if f["symbol"] == symbol), key=lambda f: f["ts"])
        got = http.get(f"/v1/forecasts/{path}")
        assert got.status_code == 200, got.text
        assert fields(got.json()) == fields(last)  # ts and source {topic, partition, offset} too
        assert got.json()["cached"] is True
    assert http.get("/v1/forecasts/WARM").status_code == 404  # 59 prices: no forecast yet
    assert http.get("/v1/forecasts/NEVER").status_code == 404
    # a decoded answer is a valid stream Forecast
    decode_forecast(http.get("/v1/forecasts/XAUUSD").content)


def test_the_latest_forecast_after_the_store_shrinks_to_committed(
    api: Callable[..., TestClient],
    predictor: Predictor,
    redis_client: redis.Redis,
    key_prefix: str,
) -> None:
    """`trim` rewrites the key at another capacity and ring position: still the same window."""
    series = {"XAUUSD": _series(6, 333)}
    published, store = _pipeline_forecasts(redis_client, key_prefix, predictor, series)
    before = redis_client.strlen(f"{key_prefix}:win:{{XAUUSD}}")
    store.trim({0: 333})  # everything committed
    assert redis_client.strlen(f"{key_prefix}:win:{{XAUUSD}}") < before
    http = api()
    got = http.get("/v1/forecasts/XAUUSD").json()
    assert fields(got) == fields(published[-1])


# ------------------------------------------------------------------ hot reload


def test_a_new_current_artifact_is_served_without_a_restart(
    api: Callable[..., TestClient], tmp_path: Path
) -> None:
    """`tickcast promote` (a new CURRENT) reaches the API as it reaches the stream."""
    root, base = artifacts_root(tmp_path)
    http = api(reload_every_s=0.1, TICKCAST_MODEL__PATH=str(root))
    w = window(31)
    before = post(http, "/v1/predict", {"prices": w}).json()
    assert before["model_version"] == base
    new = derived_artifact(root, base)
    (root / "CURRENT").write_text(new + "\n")
    deadline = time.monotonic() + 20
    while (after := post(http, "/v1/predict", {"prices": w}).json())["model_version"] != new:
        assert time.monotonic() < deadline, "the new CURRENT was not served"
        time.sleep(0.05)
    assert after["cached"] is False  # the cache is per model version
    assert after["price"] != before["price"]
    assert f'tickcast_model_info{{version="{new}"}} 1.0' in http.get("/metrics").text
    assert "tickcast_model_reloads_total 1.0" in http.get("/metrics").text


# ------------------------------------------------------------------ health, metrics, docs


def test_readyz_names_redis_when_it_is_down(api: Callable[..., TestClient], tmp_path: Path) -> None:
    private = RedisProcess(tmp_path).start()
    try:
        http = api(TICKCAST_REDIS__URL=private.url, TICKCAST_REDIS__SOCKET_TIMEOUT_S="0.5")
        assert http.get("/readyz").status_code == 200
        private.kill()
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert f"redis unreachable at {private.url}" in ready.text
        # a forecast does not need the cache: the model alone answers, uncached, the same bits
        alone = post(http, "/v1/predict", {"prices": window(9)})
        assert alone.status_code == 200, alone.text
        assert alone.json()["cached"] is False
        latest = http.get("/v1/forecasts/XAUUSD")  # the windows are in Redis: that needs it
        assert latest.status_code == 503
        assert f"redis unavailable at {private.url}" in latest.json()["detail"]
        assert http.get("/healthz").status_code == 200  # alive, only not ready
        private.start()
        assert http.get("/readyz").status_code == 200
        again = post(http, "/v1/predict", {"prices": window(9)})
        assert fields(again.json()) == fields(alone.json())
        assert again.json()["cached"] is False  # nothing was filled while Redis was gone
        assert post(http, "/v1/predict", {"prices": window(9)}).json()["cached"] is True
    finally:
        private.kill()


def test_metrics_health_and_docs(api: Callable[..., TestClient], predictor: Predictor) -> None:
    http = api()
    post(http, "/v1/predict", {"prices": window(21)})
    post(http, "/v1/predict", {"prices": window(21)})
    post(http, "/v1/predict", {"prices": window(21)[:5]})
    assert http.get("/healthz").text == "ok\n"
    assert http.get("/readyz").text == "ready\n"
    text = http.get("/metrics").text
    assert 'tickcast_api_requests_total{code="200",route="/v1/predict"} 2.0' in text
    assert 'tickcast_api_requests_total{code="422",route="/v1/predict"} 1.0' in text
    assert 'tickcast_api_forecasts_total{cached="true"} 1.0' in text
    assert 'tickcast_api_forecasts_total{cached="false"} 1.0' in text
    assert f'tickcast_model_info{{version="{predictor.version}"}} 1.0' in text
    schema = http.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/forecasts/{symbol}"} <= set(schema["paths"])
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]
    assert http.get("/docs").status_code == 200


def test_the_default_body_limit_admits_the_default_largest_batch() -> None:
    # 1,000 windows of 60 full-precision prices is ~1.13 MB: a 1 MiB limit refused what
    # serve.max_batch_windows allows (review finding).
    from stream.config import ServeSettings

    s = ServeSettings()
    window = [1951.4512345678901] * 60
    body = json.dumps({"windows": [{"prices": window}] * s.max_batch_windows}).encode()
    assert len(body) < s.max_body_bytes

"""The real `tickcast serve` beside the real `tickcast run`: the API answers the stream's
forecasts bit for bit, for the same 60 prices and as the latest forecast of each symbol."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.contracts import decode_forecast, encode_forecast
from tests.e2e.harness import ROOT, Service, expected_windows, gold_feed, produce, read_topic
from tests.serve.conftest import fields
from tools.localinfra import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


class ServeProcess:
    """`tickcast serve` on a free port, its output in a log file."""

    def __init__(self, log_path: Path, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("w") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream.cli", "serve", "--port", str(self.port), *args],
                cwd=ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"tickcast serve not ready:\n{self.log_path.read_text()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ServeProcess]]:
    made: list[ServeProcess] = []

    def make(env: dict[str, str]) -> ServeProcess:
        import os

        p = ServeProcess(tmp_path / f"serve-{len(made)}.log", {**os.environ, **env})
        made.append(p)
        p.wait_ready()
        return p

    yield make
    for p in made:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def test_the_api_and_the_running_stream_agree_bit_for_bit(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    key_prefix: str,
    unique: str,
    tmp_path: Path,
    serve: Callable[[dict[str, str]], ServeProcess],
) -> None:
    topics = {
        "ticks": topic_factory("ticks", 2),
        "forecasts": topic_factory("forecasts", 2),
        "dlq": topic_factory("dlq", 1),
    }
    env = {
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TICKCAST_KAFKA__GROUP_ID": f"g-{unique}",
        "TICKCAST_KAFKA__INSTANCE_ID": f"i-{unique}",
        "TICKCAST_TOPICS__TICKS": topics["ticks"],
        "TICKCAST_TOPICS__FORECASTS": topics["forecasts"],
        "TICKCAST_TOPICS__DEAD_LETTER": topics["dlq"],
        "TICKCAST_REDIS__URL": redis_url,
        "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
    }
    stream = Service(tmp_path / "run.log", env).start()
    try:
        feed = gold_feed(symbols=3, rows=100)
        windows = expected_windows(feed)
        produce(kafka_bootstrap, topics["ticks"], feed)
        records = read_topic(kafka_bootstrap, topics["forecasts"], len(windows), settle=1.0)
    finally:
        assert stream.stop() == 0
    published = [json.loads(encode_forecast(decode_forecast(v))) for _, v, _ in records]
    assert sorted((f["symbol"], f["ts"]) for f in published) == sorted(windows)

    api = serve({**env, "TICKCAST_SERVE__MAX_BATCH_WINDOWS": str(len(windows))})
    # the same 60 prices, one request each: the stream's cached outputs, the same forecast
    for f in published[::10]:
        request = {"prices": windows[(f["symbol"], f["ts"])].tolist(), "symbol": f["symbol"]}
        status, got = api.request("POST", "/v1/predict", {**request, "ts": f["ts"]})
        assert status == 200, got
        assert got["cached"] is True
        assert {**fields(got), "source": f["source"]} == fields(f)
    # all of them in one batch, one model call
    batch = [
        {"prices": windows[(f["symbol"], f["ts"])].tolist(), "symbol": f["symbol"], "ts": f["ts"]}
        for f in published
    ]
    status, got = api.request("POST", "/v1/predict/batch", {"windows": batch})
    assert status == 200, got
    for g, f in zip(got["forecasts"], published, strict=True):
        assert {**fields(g), "source": f["source"]} == fields(f)
    # the latest forecast of each symbol, with its ts and source, from the stream's windows
    for symbol in {f["symbol"] for f in published}:
        last = max((f for f in published if f["symbol"] == symbol), key=lambda f: f["ts"])
        status, got = api.request("GET", f"/v1/forecasts/{symbol}")
        assert status == 200, got
        assert fields(got) == fields(last)

    # another API on an empty cache computes the same bits
    fresh = serve({**env, "TICKCAST_REDIS__KEY_PREFIX": key_prefix + "-api"})
    status, got = fresh.request("POST", "/v1/predict/batch", {"windows": batch[:50]})
    assert status == 200, got
    assert not any(g["cached"] for g in got["forecasts"])
    for g, f in zip(got["forecasts"], published[:50], strict=True):
        assert {**fields(g), "source": f["source"]} == fields(f)

    # SIGTERM: drains and exits 0
    for p in (api, fresh):
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(20) == 0
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{key_prefix}-api:*", count=1000))
    assert keys  # it filled its own cache
    client.delete(*keys)
    client.close()

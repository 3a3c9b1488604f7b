"""The real `tickcast serve` with its Redis hung (SIGSTOP: connections open, nothing answers),
as tests/e2e/test_redis_outage.py hangs the stream's: a request is answered within its deadline
(--deadline), a forecast from the model alone, uncached, the same bits as from the cache."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_process import RedisProcess
from tests.serve.conftest import fields
from tests.serve.test_api import window
from tests.serve.test_serve_e2e import ServeProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    redis = RedisProcess(tmp_path).start()
    yield redis
    if redis.process is not None:
        redis.process.send_signal(signal.SIGCONT)
    redis.kill()


def test_a_hung_redis_costs_a_request_its_deadline_not_an_answer(
    private_redis: RedisProcess, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "TICKCAST_REDIS__URL": private_redis.url,
        "TICKCAST_REDIS__KEY_PREFIX": "hang",
        # Without the deadline a call would wait this long for the hung Redis, and each
        # request below would outlast its 10 s client timeout (it did: review finding).
        "TICKCAST_REDIS__SOCKET_TIMEOUT_S": "60",
    }
    api = ServeProcess(tmp_path / "serve.log", env, "--deadline", "0.4")
    try:
        api.wait_ready()
        known = {"prices": window(71), "symbol": "XAUUSD"}
        status, first = api.request("POST", "/v1/predict", known)
        assert status == 200 and first["cached"] is False, first
        assert api.request("POST", "/v1/predict", known)[1]["cached"] is True

        assert private_redis.process is not None
        private_redis.process.send_signal(signal.SIGSTOP)
        # a known window, new windows, alone and in a batch, concurrently: all answered
        answers: dict[str, tuple[int, Any]] = {}
        calls = {
            "known": ("POST", "/v1/predict", known),
            "new": ("POST", "/v1/predict", {"prices": window(72)}),
            "batch": ("POST", "/v1/predict/batch", {"windows": [known, {"prices": window(73)}]}),
            "latest": ("GET", "/v1/forecasts/XAUUSD", None),
            "readyz": ("GET", "/readyz", None),
        }

        def call(name: str) -> None:
            method, path, body = calls[name]
            answers[name] = api.request(method, path, body, timeout=10)

        threads = [threading.Thread(target=call, args=(name,)) for name in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        status, alone = answers["known"]
        assert status == 200, alone
        assert alone["cached"] is False  # the model alone
        assert fields(alone) == fields(first)  # the same forecast, bit for bit
        assert answers["new"][0] == 200 and answers["new"][1]["cached"] is False
        status, batch = answers["batch"]
        assert status == 200, batch
        assert fields(batch["forecasts"][0]) == fields(first)
        # what only Redis holds is 503 naming it, within the deadline too
        status, latest = answers["latest"]
        assert status == 503 and f"redis unavailable at {private_redis.url}" in latest["detail"]
        assert answers["readyz"][0] == 503 and "redis unreachable" in answers["readyz"][1]
        metrics = api.request("GET", "/metrics")[1]
        assert "tickcast_api_redis_errors_total 0.0" not in metrics

        private_redis.process.send_signal(signal.SIGCONT)
        api.wait_ready()
        # the cache serves again (what the model answered alone was not filled)
        new = {"prices": window(72)}
        assert api.request("POST", "/v1/predict", new)[1]["cached"] is False
        assert api.request("POST", "/v1/predict", new)[1]["cached"] is True
        api.proc.send_signal(signal.SIGTERM)
        assert api.proc.wait(20) == 0
    finally:
        if api.proc.poll() is None:
            api.proc.kill()
            api.proc.wait(10)

"""Redis goes away mid-stream: the service waits, reports not ready, resumes, and loses nothing."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from stream.contracts import decode_forecast
from tests.e2e.harness import (
    assert_matches_predictor,
    expected_windows,
    gold_feed,
    produce,
    read_topic,
)
from tools.localinfra import free_port

pytestmark = pytest.mark.e2e


class PrivateRedis:
    """A real redis-server of this test's own, with an append-only file so a restart keeps state."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed (make up installs it)"
        self.proc = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    r = PrivateRedis(tmp_path)
    r.start()
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.signal(signal.SIGCONT)
        r.kill()


def _wait(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_redis_hang_and_restart_lose_nothing(setup, kafka_bootstrap, private_redis) -> None:  # type: ignore[no-untyped-def]
    svc = setup(
        TICKCAST_REDIS__URL=private_redis.url,
        TICKCAST_REDIS__SOCKET_TIMEOUT_S="0.5",
        TICKCAST_PROCESSING__REDIS_RETRY_MAX_S="0.5",
        TICKCAST_PROCESSING__MAX_BATCH="50",
    ).start()
    feed = gold_feed(symbols=3, rows=200)
    windows = expected_windows(feed)
    third = len(feed) // 3

    # 1. Redis hangs (SIGSTOP): calls time out; the service retries and says it is not ready.
    private_redis.signal(signal.SIGSTOP)
    produce(kafka_bootstrap, setup.topics["ticks"], feed[:third])
    assert _wait(lambda: svc.metric("tickcast_redis_errors_total") > 0)
    status, body = svc.get("/readyz")
    assert status == 503 and "redis" in body
    private_redis.signal(signal.SIGCONT)
    assert _wait(lambda: svc.get("/readyz")[0] == 200)

    # 2. Redis dies and comes back on the same port with its data (append-only file).
    produce(kafka_bootstrap, setup.topics["ticks"], feed[third : 2 * third])
    private_redis.kill()
    produce(kafka_bootstrap, setup.topics["ticks"], feed[2 * third :])
    time.sleep(1.0)
    assert svc.get("/readyz")[0] == 503
    private_redis.start()

    records = read_topic(
        kafka_bootstrap, setup.topics["forecasts"], len(windows), timeout=90, settle=2.0
    )
    got = {(f.symbol, f.ts) for f in (decode_forecast(v) for _, v, _ in records)}
    assert got == set(windows), f"missing {len(set(windows) - got)} forecasts"
    assert svc.proc is not None and svc.proc.poll() is None, "the service must survive the outage"


def test_windows_are_rebuilt_from_the_topic_after_redis_lost_them(  # type: ignore[no-untyped-def]
    setup, kafka_bootstrap, redis_client, key_prefix, predictor
) -> None:
    feed = gold_feed(symbols=3, rows=130)
    windows = expected_windows(feed)
    first_part, second_part = feed[: 3 * 100], feed[3 * 100 :]

    svc = setup().start()
    produce(kafka_bootstrap, setup.topics["ticks"], first_part)
    read_topic(kafka_bootstrap, setup.topics["forecasts"], 3 * (100 - 59))
    svc.signal(signal.SIGTERM)
    assert svc.wait(15) == 0

    # Redis loses everything of ours (FLUSHDB, a restart without persistence).
    keys = list(redis_client.scan_iter(match=f"{key_prefix}:*", count=1000))
    assert keys
    redis_client.delete(*keys)

    again = setup().start()
    produce(kafka_bootstrap, setup.topics["ticks"], second_part)
    records = read_topic(kafka_bootstrap, setup.topics["forecasts"], len(windows), settle=2.0)
    forecasts = [decode_forecast(v) for _, v, _ in records]
    assert {(f.symbol, f.ts) for f in forecasts} == set(windows)
    # The 30 new ticks per symbol were forecast at once, on windows reaching back before the flush.
    assert again.metric('tickcast_ticks_total{outcome="rebuilt"}') == len(first_part)
    assert_matches_predictor(forecasts, windows, predictor)

"""`tickcast run` refuses to start, in one line naming the address, when its outside world is wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "run"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the socket goes


def test_unreachable_kafka_names_the_address() -> None:
    port = _closed_port()
    proc = _run({"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    assert proc.returncode == 2
    assert f"cannot reach Kafka at 127.0.0.1:{port} (kafka.bootstrap_servers)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_redis_names_the_address(kafka_bootstrap: str) -> None:
    port = _closed_port()
    proc = _run(
        {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TICKCAST_REDIS__URL": f"redis://127.0.0.1:{port}/0",
        }
    )
    assert proc.returncode == 2
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0 (redis.url)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_metrics_port_in_use_names_it(
    kafka_bootstrap: str, redis_url: str, topic_factory, unique: str
) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run(
            {
                "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
                "TICKCAST_REDIS__URL": redis_url,
                "TICKCAST_TOPICS__TICKS": topic_factory("ticks"),
                "TICKCAST_TOPICS__FORECASTS": topic_factory("forecasts"),
                "TICKCAST_TOPICS__DEAD_LETTER": topic_factory("dlq"),
                "TICKCAST_KAFKA__GROUP_ID": f"g-{unique}",
                "TICKCAST_METRICS__PORT": str(port),
            }
        )
    assert proc.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port} (metrics.host, metrics.port)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_redis_password_never_appears_in_messages(kafka_bootstrap: str) -> None:
    port = _closed_port()
    proc = _run(
        {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TICKCAST_REDIS__URL": f"redis://user:hunter2@127.0.0.1:{port}/0",
            "TICKCAST_REDIS__PASSWORD": "hunter3",
        }
    )
    assert proc.returncode == 2
    assert f"redis://***@127.0.0.1:{port}/0" in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout and "hunter3" not in proc.stderr + proc.stdout

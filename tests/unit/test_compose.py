"""docker-compose.yml cannot run here (no Docker engine); its structure must match the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stream import config

ROOT = Path(__file__).resolve().parents[2]


def _published(service: dict) -> set[int]:
    return {int(str(p).split(":")[-2]) for p in service.get("ports", [])}


def test_compose_runs_kafka_kraft_and_persistent_redis_on_configured_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    defaults = config.load(ROOT / "config.toml", environ={})  # not the tests' TICKCAST_* services
    services = compose["services"]
    kafka, redis = services["kafka"], services["redis"]

    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == 1
    kafka_port = int(defaults.kafka.bootstrap_servers.rsplit(":", 1)[1])
    assert kafka_port in _published(kafka)
    assert f"127.0.0.1:{kafka_port}" in env["KAFKA_ADVERTISED_LISTENERS"]

    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    redis_port = int(defaults.redis.url.split(":")[-1].split("/")[0])
    assert redis_port in _published(redis)


def test_compose_runs_the_service_scraped_by_prometheus_with_the_alert_rules() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    tickcast = services["tickcast"]
    assert tickcast["build"] == "."
    env = tickcast["environment"]
    kafka_internal = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{env['TICKCAST_KAFKA__BOOTSTRAP_SERVERS']}" in kafka_internal
    assert env["TICKCAST_REDIS__URL"].startswith("redis://redis:")
    assert env["TICKCAST_METRICS__HOST"] == "0.0.0.0"  # reachable by Prometheus in its network
    assert services["replay"]["command"][0] == "replay"

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"tickcast:{env['TICKCAST_METRICS__PORT']}"]
    mounted = " ".join(services["prometheus"]["volumes"])
    # rule_files is relative to prometheus.yml, which the container holds beside alerts.yml
    assert prometheus["rule_files"] == ["alerts.yml"]
    assert "/etc/prometheus/alerts.yml" in mounted and "/etc/prometheus/prometheus.yml" in mounted


def test_dockerfile_serves_without_tensorflow_on_a_reachable_metrics_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = dockerfile.split("RUN pip install", 1)[1].splitlines()[0]
    assert "-c constraints.txt '.[registry]'" in install and "train" not in install.replace(
        "constraints", ""
    )  # pinned, no TensorFlow
    assert "TICKCAST_METRICS__HOST=0.0.0.0" in dockerfile
    assert 'CMD ["run"]' in dockerfile and "USER tickcast" in dockerfile


def _healthcheck_probe() -> str:
    """The Python code of the Dockerfile's HEALTHCHECK."""
    line = next(
        ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.startswith("HEALTHCHECK")
    )
    return line.split('python -c "', 1)[1].rsplit('"', 1)[0]


@pytest.mark.parametrize("healthy", [True, False])
def test_healthcheck_asks_the_configured_metrics_port(healthy: bool) -> None:
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry

    from stream.metrics import Health, Metrics, serve
    from tools.localinfra import free_port

    probe = _healthcheck_probe()
    assert "TICKCAST_METRICS__PORT" in probe
    # 9400 only as the fallback, and the same as the settings' default
    assert probe.count("9400") == 1 and config.MetricsSettings().port == 9400
    port = free_port()
    server = serve(Metrics(CollectorRegistry()), Health(), "127.0.0.1", port) if healthy else None
    try:
        env = {**os.environ, "TICKCAST_METRICS__PORT": str(port)}
        proc = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, timeout=30
        )
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert (proc.returncode == 0) is healthy

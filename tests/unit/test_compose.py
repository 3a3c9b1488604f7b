"""docker-compose.yml cannot run here (no Docker engine); its structure must match the config."""

from __future__ import annotations

from pathlib import Path

import yaml

from stream.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _published(service: dict) -> set[int]:
    return {int(str(p).split(":")[-2]) for p in service.get("ports", [])}


def test_compose_runs_kafka_kraft_and_persistent_redis_on_configured_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    defaults = Settings()
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

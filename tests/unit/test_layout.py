"""The house rules that keep data flowing one way (DESIGN.md: only the Kafka adapter touches
Kafka, only the window store and the cache touch Redis)."""

from __future__ import annotations

from pathlib import Path

STREAM = Path(__file__).resolve().parents[2] / "stream"


def _naming(word: str) -> set[str]:
    return {p.name for p in STREAM.rglob("*.py") if word in p.read_text(encoding="utf-8")}


def test_only_the_kafka_adapter_names_the_kafka_client() -> None:
    # formats.py is the Schema Registry's door: it names the client library's registry client
    # and serializers, never a consumer or producer.
    assert _naming("confluent_kafka") == {"kafka.py", "formats.py"}
    registry = (STREAM / "formats.py").read_text(encoding="utf-8")
    imports = {
        line.split()[1]
        for line in registry.splitlines()
        if "import" in line and "confluent_kafka" in line and line.lstrip().startswith("from")
    }
    assert imports <= {
        "confluent_kafka.schema_registry",
        "confluent_kafka.serialization",
        "confluent_kafka.schema_registry.avro",
        "confluent_kafka.schema_registry.json_schema",
        "confluent_kafka.schema_registry.protobuf",
    }, imports


def test_the_loop_and_the_checkpoint_know_no_redis_client() -> None:
    redis_users = _naming("import redis") | _naming("from redis")
    assert not redis_users & {
        "runner.py",
        "checkpoint.py",
        "pipeline.py",
        "kafka.py",
        "recovery.py",
    }

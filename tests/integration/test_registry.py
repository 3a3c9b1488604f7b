"""A real Schema Registry: Apicurio Registry's Confluent-compatible API, started by the project's
own tooling (tools/localinfra.start_registry, `tickcast services registry up`), used by
confluent-kafka's SchemaRegistryClient and its Avro serializers, with the bytes going through the
real broker.

If the registry cannot be fetched or started (no Java 21+, no Maven, port taken), the tests fail with
the tooling's reason: nothing here is skipped.
"""

from __future__ import annotations

import struct
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from tools import localinfra

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

TICK_V1 = """{
  "type": "record", "name": "Tick", "namespace": "tickcast.test",
  "fields": [
    {"name": "symbol", "type": "string"},
    {"name": "ts_ms", "type": "long"},
    {"name": "price", "type": "double"}
  ]
}"""


@pytest.fixture(scope="module")
def schema_registry_url() -> str:
    """The registry's Confluent-compatible URL. Started if not running, and left running, as the
    suite does with Kafka and Redis: `tickcast services down` (`make down`) stops it."""
    with warnings.catch_warnings():
        # start_registry lets go of its Popen while the registry runs (it is stopped by pid, as
        # `tickcast services down` does): its ResourceWarning says so, and is no news here.
        warnings.simplefilter("ignore", ResourceWarning)
        # A registry that cannot start raises LocalInfraError: the tests error with the reason.
        return localinfra.start_registry(localinfra.Layout(ROOT / ".local"))


@pytest.fixture
def clients() -> Iterator[Callable[[str], SchemaRegistryClient]]:
    """Makes SchemaRegistryClients and closes their HTTP sessions after the test."""
    made: list[SchemaRegistryClient] = []

    def make(url: str) -> SchemaRegistryClient:
        made.append(SchemaRegistryClient({"url": url}))
        return made[-1]

    yield make
    for client in made:
        client.close()


def _consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    try:
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            value = msg.value()
            assert value is not None
            return value
    finally:
        consumer.close()
    raise AssertionError(f"no message arrived on {topic} within 30 s")


def test_avro_register_serialize_deserialize_through_kafka(
    schema_registry_url: str,
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    clients: Callable[[str], SchemaRegistryClient],
) -> None:
    topic = topic_factory("registry")
    ctx = SerializationContext(topic, MessageField.VALUE)
    writer_client = clients(schema_registry_url)
    serializer = AvroSerializer(writer_client, TICK_V1)  # registers under <topic>-value
    record = {"symbol": "EURUSD", "ts_ms": 1_764_000_000_123, "price": 1.08765}
    payload = serializer(record, ctx)
    assert payload is not None

    # Confluent's wire format: magic byte 0, then the registry's id of the writer schema.
    magic, schema_id = struct.unpack(">bI", payload[:5])
    assert magic == 0
    registered = writer_client.get_latest_version(f"{topic}-value")
    assert registered.schema_id == schema_id
    assert registered.version == 1

    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, value=payload)
    assert producer.flush(30) == 0
    received = _consume_one(kafka_bootstrap, topic)
    assert received == payload

    # A fresh client has nothing cached: the schema comes from the registry, by the id in the bytes.
    reader_client = clients(schema_registry_url)
    fetched = reader_client.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert "ts_ms" in fetched.schema_str
    deserializer = AvroDeserializer(reader_client)
    assert deserializer(received, ctx) == record


def test_backward_compatibility_is_enforced(
    schema_registry_url: str, clients: Callable[[str], SchemaRegistryClient]
) -> None:
    client = clients(schema_registry_url)
    subject = f"compat-{uuid.uuid4().hex[:10]}-value"
    first = client.register_schema(subject, Schema(TICK_V1, "AVRO"))
    assert client.register_schema(subject, Schema(TICK_V1, "AVRO")) == first  # same schema, same id
    client.set_compatibility(subject, "BACKWARD")

    # A new field with a default can read old data: accepted as version 2.
    with_default = TICK_V1.replace(
        '{"name": "price", "type": "double"}',
        '{"name": "price", "type": "double"}, {"name": "venue", "type": "string", "default": ""}',
    )
    second = client.register_schema(subject, Schema(with_default, "AVRO"))
    assert second != first
    assert client.get_latest_version(subject).version == 2

    # A new field without a default cannot: the registry refuses it (HTTP 409).
    without_default = TICK_V1.replace(
        '{"name": "price", "type": "double"}',
        '{"name": "price", "type": "double"}, {"name": "size", "type": "long"}',
    )
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(without_default, "AVRO"))
    assert refused.value.http_status_code == 409
    assert client.get_latest_version(subject).version == 2

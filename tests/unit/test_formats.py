"""Ticks and forecasts in Avro, Protobuf and JSON Schema (stream/formats.py), with confluent-kafka's
real serializers and its in-process registry (`mock://`): round trips, every rejection reason, and
total decoding of any byte string. A registry server is exercised end to end in
tests/e2e/test_formats.py."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import config
from stream.config import FormatSettings
from stream.contracts import Forecast, Record, Source, decode_batch
from stream.errors import ConfigError, RegistryUnavailable
from stream.formats import (
    SAMPLE_FORECAST,
    RegistryFormat,
    proto_classes,
    proto_file,
    schema_text,
)

KINDS = ("avro", "protobuf", "json-schema")
MAX = 65_536


def registered(kind: str, auto: bool = False) -> RegistryFormat:
    wire = RegistryFormat(
        FormatSettings(kind=kind, registry_url=f"mock://{uuid.uuid4().hex}", auto_register=auto),
        "ticks",
        "forecasts",
    )
    wire.register()
    return wire


def record(value: bytes, key: bytes | None = b"XAUUSD", offset: int = 0) -> Record:
    return Record("ticks", 0, offset, key, value, 0)


FORECAST = Forecast(
    "XAUUSD",
    1714559400000,
    1,
    1953.25,
    1940.5,
    1966.0,
    0.8,
    1951.45,
    "85f97872a294",
    "a" * 32,
    False,
    Source("ticks", 3, 12345678901),
    1714559400123,
)


@pytest.mark.parametrize("kind", KINDS)
def test_a_tick_round_trips_into_the_same_tick_a_json_one_gives(kind: str) -> None:
    wire = registered(kind)
    value = wire.encode_tick("XAUUSD", 1951.45, 1714559400000)
    assert value[0] == 0  # the registry wire form: magic byte, schema id, record
    [tick], rejected = decode_batch([record(value)], MAX, parse=wire.tick_fields)
    [same], _ = decode_batch(
        [record(b'{"symbol": "XAUUSD", "price": 1951.45, "ts": 1714559400000}')], MAX
    )
    assert rejected == [] and tick == same


@pytest.mark.parametrize("kind", KINDS)
def test_a_forecast_round_trips_field_for_field(kind: str) -> None:
    wire = registered(kind)
    assert wire.decode_forecast(wire.encode_forecast(FORECAST)) == FORECAST


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("fields", "key", "reason"),
    [
        ({"symbol": "XAU USD!", "price": 1.0, "ts": 1}, b"XAU USD!", "bad_symbol"),
        ({"symbol": "XAUUSD", "price": 1.0, "ts": 1}, b"EURUSD", "key_mismatch"),
        ({"symbol": "XAUUSD", "price": 1.0, "ts": 2**60}, b"XAUUSD", "bad_ts"),
    ],
)
def test_a_record_that_decodes_gets_the_checks_a_json_tick_gets(
    kind: str, fields: dict[str, object], key: bytes, reason: str
) -> None:
    wire = registered(kind)
    if kind == "json-schema":
        # Its serializer would refuse the bad symbol (the schema has the pattern): written by hand.
        value = wire.encode_tick("XAUUSD", 1.0, 1)[:5] + json.dumps(fields).encode()
    else:
        value = wire.encode_tick(
            str(fields["symbol"]), float(str(fields["price"])), int(str(fields["ts"]))
        )
    ticks, [bad] = decode_batch([record(value, key)], MAX, parse=wire.tick_fields)
    expected = "bad_encoding" if kind == "json-schema" and reason == "bad_symbol" else reason
    assert ticks == [] and bad.reason == expected and bad.value == value


@pytest.mark.parametrize("kind", ["avro", "protobuf"])
def test_a_non_positive_price_is_the_json_reason(kind: str) -> None:
    wire = registered(kind)
    value = wire.encode_tick("XAUUSD", -3.5, 1)
    _, [bad] = decode_batch([record(value)], MAX, parse=wire.tick_fields)
    assert bad.reason == "non_positive_price"


def test_json_schema_refuses_what_its_schema_forbids_before_decoding() -> None:
    # The shipped JSON Schema states the price bound: the serializer refuses to write such a
    # tick, and a reader refuses one written anyway (bad_encoding, the schema's own words).
    wire = registered("json-schema")
    good = wire.encode_tick("XAUUSD", 3.5, 1)
    forged = good[:5] + b'{"symbol": "XAUUSD", "price": -3.5, "ts": 1}'
    _, [bad] = decode_batch([record(forged)], MAX, parse=wire.tick_fields)
    assert bad.reason == "bad_encoding" and "minimum" in bad.detail


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_that_are_not_the_wire_form_are_named(kind: str) -> None:
    wire = registered(kind)
    good = wire.encode_tick("XAUUSD", 1951.45, 1)
    cases = {
        b'{"symbol": "XAUUSD", "price": 1.0, "ts": 1}': "no_schema_id",  # plain JSON
        b"\x00\x00\x00": "no_schema_id",  # too short for a schema id
        good[:5] + b"\xff\xfe\xfd": "bad_encoding",
        # Protobuf: the schema id and a message index, then no field: every field at its
        # default, so an empty symbol (a valid encoding, an invalid tick).
        good[:6]: "bad_symbol" if kind == "protobuf" else "bad_encoding",
    }
    cases[b"\x00\x00\x00\x7f\xff" + good[5:]] = "unknown_schema"  # checked for every kind
    records = [record(v, offset=i) for i, v in enumerate(cases)]
    ticks, rejected = decode_batch(records, MAX, parse=wire.tick_fields)
    assert ticks == []
    assert [r.reason for r in rejected] == list(cases.values()), [r.detail for r in rejected]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_decoding_is_total_for_any_bytes_after_a_schema_id(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS))
    wire = _WIRES[kind]
    prefix = data.draw(st.sampled_from([b"", b"\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00\x02"]))
    value = prefix + data.draw(st.binary(max_size=300))
    ticks, rejected = decode_batch([record(value)], MAX, parse=wire.tick_fields)
    assert len(ticks) + len(rejected) == 1


_WIRES = {kind: registered(kind) for kind in KINDS}


def test_start_requires_registered_subjects_unless_told_to_register() -> None:
    wire = RegistryFormat(
        FormatSettings(kind="avro", registry_url=f"mock://{uuid.uuid4().hex}"), "t", "f"
    )
    with pytest.raises(ConfigError, match="no schema registered for subject t-value"):
        wire.check()
    auto = RegistryFormat(
        FormatSettings(kind="avro", registry_url=f"mock://{uuid.uuid4().hex}", auto_register=True),
        "t",
        "f",
    )
    auto.check()
    assert auto.client.get_latest_version("f-value").schema_id is not None


def test_the_three_schemas_and_the_proto_name_the_forecast_fields_in_order() -> None:
    fields = list(Forecast.__struct_fields__)
    avro = json.loads(schema_text("avro", "forecast"))
    assert [f["name"] for f in avro["fields"]] == fields
    jschema = json.loads(schema_text("json-schema", "forecast"))
    assert list(jschema["properties"]) == fields and jschema["required"] == fields
    proto = proto_file(schema_text("protobuf", "forecast"))
    [message] = [m for m in proto.message_type if m.name == "Forecast"]
    assert [f.name for f in message.field] == fields
    assert [f.number for f in message.field] == list(range(1, len(fields) + 1))
    tick = next(m for m in proto.message_type if m.name == "Tick")
    assert [f.name for f in tick.field] == ["symbol", "price", "ts"]
    assert [f["name"] for f in json.loads(schema_text("avro", "tick"))["fields"]] == [
        "symbol",
        "price",
        "ts",
    ]


def test_the_proto_parser_reads_every_field_line_of_the_shipped_file() -> None:
    text = schema_text("protobuf", "tick")
    lines = re.findall(r"^\s+\w+\s+\w+\s*=\s*\d+;", text, re.MULTILINE)
    parsed = sum(len(m.field) for m in proto_file(text).message_type)
    assert parsed == len(lines) == 3 + 3 + 13
    classes = proto_classes()
    assert classes["Tick"](symbol="X", price=1.0, ts=2).ts == 2


def test_a_registry_kind_without_a_registry_url_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"format\.registry_url"):
        config.load(None, environ={"TICKCAST_FORMAT__KIND": "avro"})
    path = tmp_path / "c.toml"
    path.write_text("[format]\nregistry_user_info = 'u:p'\n")
    with pytest.raises(ConfigError, match="TICKCAST_FORMAT__REGISTRY_USER_INFO"):
        config.load(path, environ={})
    s = config.load(
        None,
        environ={
            "TICKCAST_FORMAT__KIND": "protobuf",
            "TICKCAST_FORMAT__REGISTRY_URL": "http://127.0.0.1:1",
            "TICKCAST_FORMAT__REGISTRY_USER_INFO": "user:hunter2",
        },
    )
    assert "hunter2" not in repr(s) and s.format.kind == "protobuf"


DEEP: object = "int"
for _ in range(20):  # arrays of arrays: not recursive, but as deep as fastavro's C stack cares
    DEEP = {"type": "array", "items": DEEP}

RECURSIVE = json.dumps(
    {"type": "record", "name": "N", "fields": [{"name": "next", "type": ["null", "N"]}]}
)


def test_a_recursive_writer_schema_is_refused_before_its_record_is_decoded() -> None:
    # fastavro's compiled reader recursed in C once per level of this 20 KB record and crashed
    # the process (SIGSEGV), on every restart: the schema is judged before any record under it.
    wire = registered("avro")
    evil = wire.client.register_schema("evil-value", Schema(RECURSIVE, "AVRO"))
    value = b"\x00" + evil.to_bytes(4, "big") + b"\x02" * 20_000 + b"\x00"
    ticks, [bad] = decode_batch([record(value)], MAX, parse=wire.tick_fields)
    assert ticks == [] and bad.reason == "unsupported_schema" and "recursive" in bad.detail


@pytest.mark.parametrize(
    ("schema", "verdict"),
    [
        (schema_text("avro", "tick"), ""),
        (schema_text("avro", "forecast"), ""),
        (RECURSIVE, "recursive"),
        (
            json.dumps({"type": "record", "name": "T", "fields": [{"name": "x", "type": DEEP}]}),
            "deeper",
        ),
    ],
)
def test_writer_schemas_are_judged_for_depth_and_recursion(schema: str, verdict: str) -> None:
    from stream.formats import _unsafe_avro

    why = _unsafe_avro(schema)
    assert (verdict in why) if verdict else why == ""


def test_avro_logical_types_of_a_usual_writer_schema_are_read_as_a_tick() -> None:
    wire = registered("avro")
    writer = {
        "type": "record",
        "name": "Tick",
        "namespace": "feed",
        "fields": [
            {"name": "symbol", "type": "string"},
            {
                "name": "price",
                "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 4},
            },
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        ],
    }
    from decimal import Decimal

    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serialize = AvroSerializer(
        wire.client, json.dumps(writer), conf={"auto.register.schemas": True}
    )
    import datetime as dt

    value = serialize(
        {
            "symbol": "XAUUSD",
            "price": Decimal("1951.4500"),
            "ts": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        },
        SerializationContext("other-topic", MessageField.VALUE),
    )
    assert value is not None
    [tick], rejected = decode_batch([record(value)], MAX, parse=wire.tick_fields)
    assert rejected == [] and (tick.price, tick.ts) == (1951.45, 1714566600000)


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("Expecting value: line 1 column 1 (char 0)"),  # an HTML page with 200
        SchemaRegistryError(404, -1, "Not Found"),  # an ingress' 404, not the registry's
        SchemaRegistryError(500, 50001, "store error"),
    ],
)
def test_a_registry_that_misbehaves_is_unavailable_not_a_bad_tick(
    failure: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = registered("avro")
    good = wire.encode_tick("XAUUSD", 1.0, 1)
    fresh = registered("avro")  # has not seen the id yet

    def broken(schema_id: int, *args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(fresh.client, "get_schema", broken)
    with pytest.raises(RegistryUnavailable):
        decode_batch([record(good)], MAX, parse=fresh.tick_fields)


def test_the_loop_waits_for_the_registry_and_reports_it_not_redis() -> None:
    from prometheus_client import CollectorRegistry

    from stream.metrics import Health, Metrics
    from stream.retry import RedisRetry

    metrics, health = Metrics(CollectorRegistry()), Health(model_loaded=True, redis_ok=True)
    seen: list[str] = []
    calls = iter([RegistryUnavailable("schema registry at http://r unreachable"), None])

    def step() -> str:
        failure = next(calls)
        if failure is not None:
            raise failure
        seen.append(health.registry_down)  # still reported while it was being waited for
        return "done"

    assert RedisRetry(metrics, health, lambda: False, cap_s=0.01)(step) == "done"
    assert seen == ["schema registry at http://r unreachable"]
    assert health.registry_down == "" and health.redis_ok
    assert metrics.registry.get_sample_value("tickcast_redis_errors_total") == 0


@pytest.mark.parametrize("kind", ["avro", "json-schema"])
def test_a_registry_that_never_answers_is_unavailable_within_the_timeout(kind: str) -> None:
    # Seen in CI: a registry request that was accepted and never answered held the service's
    # loop for good (confluent-kafka's client sets no HTTP timeout unless given one), silently.
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept and never answer
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    outcome: list[BaseException | None] = []

    def check() -> None:
        try:
            settings = FormatSettings(kind=kind, registry_url=url, registry_timeout_s=0.5)
            RegistryFormat(settings, "ticks", "forecasts").check()
            outcome.append(None)
        except BaseException as exc:  # the test reports whatever came out
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(20)
    stop.set()
    for conn in held:
        conn.close()
    server.close()
    assert not worker.is_alive(), "check() still waiting on a registry that never answers"
    assert isinstance(outcome[0], RegistryUnavailable), outcome
    assert "unreachable" in str(outcome[0]) and url in str(outcome[0])
    # one request's timeout and the client's few retries, not forever
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("auto", [False, True])
@pytest.mark.parametrize("kind", ["avro", "json-schema", "protobuf"])
def test_after_the_start_check_a_forecast_is_encoded_without_asking_the_registry(
    kind: str, auto: bool
) -> None:
    # The serializer's first use asks the registry (the subject's associations, its schema):
    # check() does it at start, so no batch waits on the registry to encode its forecasts.
    wire = registered(kind, auto)
    wire.check()
    asked: list[str] = []
    client = wire.client
    for name in dir(client):
        call = getattr(client, name)
        # get_latest_version is asked on every encode with use.latest.version; the real client
        # answers it from its own cache (no expiry by default) after check()'s first call
        if (
            name.startswith(("get_", "lookup_", "register_"))
            and name != "get_latest_version"
            and callable(call)
        ):
            setattr(client, name, _recording(name, call, asked))
    forecast = msgspec.structs.replace(SAMPLE_FORECAST, symbol="XAUUSD", price=1900.5)
    encoded = wire.encode_forecast(forecast)
    assert asked == []
    assert wire.decode_forecast(encoded) == forecast


def _recording(name: str, call: Any, asked: list[str]) -> Any:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        asked.append(name)
        return call(*args, **kwargs)

    return recorded

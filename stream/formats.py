"""Ticks and forecasts in a Schema Registry format: Avro, Protobuf or JSON Schema (DESIGN.md:
Formats), through confluent-kafka's own serializers and registry client.

JSON (the default) never comes here: its decoder is the fast path in stream/contracts.py. With
`format.kind` set to a registry format, a tick's value is the Confluent wire form (a zero byte,
the 4-byte schema id, the encoded record); it is decoded under the schema its id names and then
checked by exactly the rules a JSON tick is (symbol, price, ts, key, future), so a bad tick is
dead-lettered with the same reasons, plus three of its own:

- `no_schema_id`: the value does not start with the wire form's zero byte and schema id;
- `unknown_schema`: the registry has no schema with that id (its own 404), or one of another
  format;
- `unsupported_schema`: an Avro writer schema that is recursive or nested deeper than
  AVRO_MAX_DEPTH (fastavro's compiled reader would recurse in C and crash the process);
- `bad_encoding`: the record does not decode under its schema.

A registry that cannot answer is not the message's fault: RegistryUnavailable (a
StoreUnavailable) is raised instead; the loop retries the batch with backoff, reports not-ready,
and commits nothing past it. Writer schemas are fetched and judged once per id (and cached by
the client), so a running service asks the registry only for a writer schema it has not seen.

The schemas ship in stream/schemas/ and are registered under the topics' subjects
(`<topic>-value`, the default TopicNameStrategy) by `tickcast schemas register`, or at start when
`format.auto_register` is true.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import msgspec
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from stream.config import FormatSettings
from stream.contracts import Forecast, Source, Undecodable
from stream.errors import ConfigError, RegistryUnavailable

_SCHEMAS = files("stream") / "schemas"


def schema_text(kind: str, record: str) -> str:
    """The shipped schema of `record` ("tick" or "forecast") in `kind`'s language."""
    name = {"avro": f"{record}.avsc", "json-schema": f"{record}.schema.json"}.get(kind)
    if name is None:  # protobuf: one .proto holds both
        return (_SCHEMAS / "tickcast.proto").read_text(encoding="utf-8")
    return (_SCHEMAS / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------ protobuf message types

_PROTO_TYPES = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
}
_MESSAGE = re.compile(r"message\s+(\w+)\s*\{([^}]*)\}")
_FIELD = re.compile(r"^\s*(\w+)\s+(\w+)\s*=\s*(\d+)\s*;", re.MULTILINE)


def proto_file(text: str) -> descriptor_pb2.FileDescriptorProto:
    """The descriptor of stream/schemas/tickcast.proto: flat proto3 messages of scalar or message
    fields, which is all it holds (no protoc needed at run time; a test holds the two equal)."""
    package = re.search(r"^package\s+([\w.]+);", text, re.MULTILINE)
    fd = descriptor_pb2.FileDescriptorProto(
        name="tickcast.proto", package=package.group(1) if package else "", syntax="proto3"
    )
    for name, body in _MESSAGE.findall(re.sub(r"//[^\n]*", "", text)):
        msg = fd.message_type.add(name=name)
        for type_name, field_name, number in _FIELD.findall(body):
            field = msg.field.add(
                name=field_name,
                number=int(number),
                label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                json_name=field_name,
            )
            if type_name in _PROTO_TYPES:
                field.type = _PROTO_TYPES[type_name]
            else:
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{fd.package}.{type_name}"
    return fd


def proto_classes() -> dict[str, Any]:
    """The Tick, Source and Forecast message classes, built from the shipped .proto."""
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(proto_file(schema_text("protobuf", "tick")))
    return {
        name: message_factory.GetMessageClass(fd.message_types_by_name[name])
        for name in ("Tick", "Source", "Forecast")
    }


#: Avro nesting a tick's writer schema may have: fastavro's compiled reader recurses in C per
#: level, and a recursive schema with a deep record crashed the process (SIGSEGV), not a
#: catchable error; a tick needs two or three levels.
AVRO_MAX_DEPTH = 16
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _unsafe_avro(schema_str: str) -> str:
    """Why an Avro writer schema is refused ("" if it is fine): recursive, or nested too deep."""
    try:
        schema = json.loads(schema_str)
    except ValueError:
        return "not valid JSON"

    def walk(node: Any, depth: int, open_names: frozenset[str]) -> str:
        if depth > AVRO_MAX_DEPTH:
            return f"nested deeper than {AVRO_MAX_DEPTH} levels"
        if isinstance(node, str):
            return f"recursive (type {node} within itself)" if node in open_names else ""
        if isinstance(node, list):  # a union
            return next((w for w in (walk(n, depth + 1, open_names) for n in node) if w), "")
        if not isinstance(node, dict):
            return ""
        name = node.get("name")
        if isinstance(name, str) and node.get("type") in ("record", "error", "enum", "fixed"):
            namespace = node.get("namespace")
            open_names = open_names | {name} | ({f"{namespace}.{name}"} if namespace else set())
        children = [f.get("type") for f in node.get("fields", []) if isinstance(f, dict)]
        children += [node[k] for k in ("items", "values") if k in node]
        if isinstance(node.get("type"), dict | list):
            children.append(node["type"])
        return next((w for w in (walk(c, depth + 1, open_names) for c in children) if w), "")

    return walk(schema, 0, frozenset())


# ------------------------------------------------------------------ the format


@dataclass
class _Serdes:
    serialize: Callable[[Any, SerializationContext], bytes | None]
    deserialize: Callable[[bytes, SerializationContext], Any]


def _transport_error(exc: BaseException) -> bool:
    """The registry could not be reached or did not answer in time (a socket error, one of
    httpx's timeouts or connection errors): not the message's fault."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith(("httpx", "httpcore"))


#: encoded once at start (RegistryFormat.check), so the forecast serializer's registry lookups
#: are done before the first batch; never published
SAMPLE_FORECAST = Forecast(
    symbol="SAMPLE",
    ts=0,
    horizon=1,
    price=1.0,
    lower=1.0,
    upper=1.0,
    interval=0.8,
    last_price=1.0,
    model_version="sample",
    window_hash="0" * 32,
    cached=False,
    source=Source("sample", 0, 0),
    produced_at=0,
)


class RegistryFormat:
    """Encode and decode ticks and forecasts in `settings.kind` through the registry."""

    def __init__(self, settings: FormatSettings, ticks_topic: str, forecasts_topic: str) -> None:
        if settings.kind == "json":
            raise ConfigError("config error: format.kind json needs no registry format")
        self.kind = settings.kind
        self.ticks_topic = ticks_topic
        self.forecasts_topic = forecasts_topic
        conf: dict[str, Any] = {"url": settings.registry_url}
        if not settings.registry_url.startswith("mock://"):
            conf["timeout"] = settings.registry_timeout_s
        secret = settings.registry_user_info.get_secret_value()
        if secret:
            conf["basic.auth.user.info"] = secret
        if settings.registry_ca_location:
            conf["ssl.ca.location"] = settings.registry_ca_location
        # new_client: a mock:// URL gives confluent-kafka's in-process registry (tests)
        self.client = SchemaRegistryClient.new_client(conf)
        self.client_url = settings.registry_url
        #: writer schema ids already checked (_check_writer)
        self._writers_ok: set[int] = set()
        self.auto_register = settings.auto_register
        self._protos = proto_classes() if self.kind == "protobuf" else {}
        self.tick = self._serdes("tick")
        self.forecast = self._serdes("forecast")

    def _serdes(self, record: str) -> _Serdes:
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
        from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
        from confluent_kafka.schema_registry.protobuf import (
            ProtobufDeserializer,
            ProtobufSerializer,
        )

        # Not registering: write with the subject's latest schema (the one `tickcast schemas
        # register` put there), found by subject rather than by comparing schema texts.
        conf = {
            "auto.register.schemas": self.auto_register,
            "use.latest.version": not self.auto_register,
        }
        if self.kind == "avro":
            text = schema_text("avro", record)
            return _Serdes(
                AvroSerializer(self.client, text, conf=conf),
                # No reader schema: the writer's (from the registry, by id) is read as is, and the
                # checks after decoding decide what a tick is.
                AvroDeserializer(self.client),
            )
        if self.kind == "json-schema":
            text = schema_text("json-schema", record)
            return _Serdes(
                JSONSerializer(text, self.client, conf=conf),
                JSONDeserializer(text, schema_registry_client=self.client),
            )
        cls = self._protos[record.capitalize()]
        pconf = {**conf, "use.deprecated.format": False}
        return _Serdes(
            ProtobufSerializer(cls, self.client, conf=pconf),
            ProtobufDeserializer(cls, conf={"use.deprecated.format": False}),
        )

    def close(self) -> None:
        """Close the registry client's HTTP connections."""
        self.client.close()

    # -------------------------------------------------------------- registration

    def subjects(self) -> dict[str, str]:
        """subject -> the record it holds (TopicNameStrategy: `<topic>-value`)."""
        return {f"{self.ticks_topic}-value": "tick", f"{self.forecasts_topic}-value": "forecast"}

    def register(self) -> dict[str, int]:
        """Register the shipped schemas under their subjects; subject -> schema id."""
        schema_type = {"avro": "AVRO", "json-schema": "JSON", "protobuf": "PROTOBUF"}[self.kind]
        out = {}
        for subject, record in self.subjects().items():
            text = schema_text(self.kind, record)
            if self.kind == "protobuf":
                # As confluent-kafka's serializers hand a .proto to a registry: the serialized
                # file descriptor in base64 (the .proto's text needs a registry-side parser).
                text = base64.standard_b64encode(proto_file(text).SerializeToString()).decode()
            try:
                out[subject] = self.client.register_schema(subject, Schema(text, schema_type))
            except SchemaRegistryError as exc:
                raise RegistryUnavailable(f"registering {subject}: {exc}") from None
            except Exception as exc:  # httpx's connection errors, and the like
                raise RegistryUnavailable(self._unreachable(exc)) from None
        return out

    def check(self) -> None:
        """At start: every subject has a schema (or is registered now, with auto_register)."""
        if self.auto_register:
            self.register()
        else:
            self._check_subjects()
        # The forecast serializer's own lookups (the subject's associations, its latest schema)
        # happen at its first use: done here, at start, rather than inside the first batch.
        self.encode_forecast(SAMPLE_FORECAST)

    def _check_subjects(self) -> None:
        for subject in self.subjects():
            try:
                self.client.get_latest_version(subject)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise ConfigError(
                        f"config error: no schema registered for subject {subject} at "
                        f"{self.client_url} (format.registry_url); run `tickcast schemas register`"
                        " or set format.auto_register = true"
                    ) from None
                raise RegistryUnavailable(f"subject {subject}: {exc}") from None
            except Exception as exc:
                raise RegistryUnavailable(self._unreachable(exc)) from None

    def _unreachable(self, exc: BaseException) -> str:
        return f"schema registry at {self.client_url} (format.registry_url) unreachable: {exc}"

    # -------------------------------------------------------------- ticks

    def tick_fields(self, value: bytes) -> dict[str, Any]:
        """The tick's fields as decoded under its schema, for the same checks a JSON tick gets;
        Undecodable if it is not a record of a registered schema."""
        if len(value) < 5 or value[0] != 0:
            raise Undecodable("no_schema_id", "not the registry wire form (0, schema id, record)")
        self._check_writer(int.from_bytes(value[1:5], "big"))
        ctx = SerializationContext(self.ticks_topic, MessageField.VALUE)
        try:
            obj = self.tick.deserialize(value, ctx)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                schema_id = int.from_bytes(value[1:5], "big")
                raise Undecodable(
                    "unknown_schema", f"schema id {schema_id} not registered"
                ) from None
            raise RegistryUnavailable(f"schema lookup: {exc}") from None
        except Exception as exc:  # the serdes' own errors, fastavro's, protobuf's, recursion
            if _transport_error(exc):
                raise RegistryUnavailable(self._unreachable(exc)) from None
            raise Undecodable("bad_encoding", f"{type(exc).__name__}: {exc}"[:200]) from None
        if self.kind == "protobuf":
            return {"symbol": obj.symbol, "price": obj.price, "ts": obj.ts}
        if not isinstance(obj, dict):
            raise Undecodable("bad_encoding", f"a {type(obj).__name__}, not a record")
        # Avro's logical types for the usual writer schemas: a timestamp-millis ts, a decimal price
        ts, price = obj.get("ts"), obj.get("price")
        if isinstance(ts, dt.datetime) and ts.tzinfo is not None:
            obj["ts"] = (ts - _EPOCH) // dt.timedelta(milliseconds=1)
        if isinstance(price, decimal.Decimal):
            obj["price"] = float(price)
        return obj

    def _check_writer(self, schema_id: int) -> None:
        """The writer schema a tick names, fetched and judged once per id (the client caches
        the schema too): unknown ids and schemas that cannot be decoded safely are the
        message's fault (Undecodable), a registry that misbehaves is not (RegistryUnavailable)."""
        if schema_id in self._writers_ok:
            return
        try:
            schema = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            # A registry's own 404 (error code 404xx); an ingress' 404 page is not an answer.
            if exc.http_status_code == 404 and exc.error_code // 100 == 404:
                raise Undecodable(
                    "unknown_schema", f"schema id {schema_id} not registered"
                ) from None
            raise RegistryUnavailable(f"schema id {schema_id}: {exc}") from None
        except Exception as exc:  # a reply that is not the registry's JSON, a connection error
            raise RegistryUnavailable(self._unreachable(exc)) from None
        expected = {"avro": "AVRO", "json-schema": "JSON", "protobuf": "PROTOBUF"}[self.kind]
        actual = schema.schema_type or "AVRO"
        if actual != expected:
            raise Undecodable(
                "unknown_schema", f"schema id {schema_id} is {actual}, not {expected}"
            )
        if self.kind == "avro":
            why = _unsafe_avro(schema.schema_str or "")
            if why:
                raise Undecodable("unsupported_schema", f"schema id {schema_id}: {why}")
        if len(self._writers_ok) < 10_000:  # bounded: ids come from the input
            self._writers_ok.add(schema_id)

    def encode_tick(self, symbol: str, price: float, ts: int) -> bytes:
        fields = {"symbol": symbol, "price": float(price), "ts": int(ts)}
        record = self._protos["Tick"](**fields) if self.kind == "protobuf" else fields
        return self._serialize(self.tick, record, self.ticks_topic)

    # -------------------------------------------------------------- forecasts

    def encode_forecast(self, f: Forecast) -> bytes:
        fields = msgspec.to_builtins(f)
        if self.kind == "protobuf":
            fields["source"] = self._protos["Source"](**fields["source"])
            return self._serialize(self.forecast, self._protos["Forecast"](**fields), "")
        return self._serialize(self.forecast, fields, "")

    def decode_forecast(self, value: bytes) -> Forecast:
        """A forecast from its wire form; ValueError if it is not one."""
        ctx = SerializationContext(self.forecasts_topic, MessageField.VALUE)
        try:
            obj = self.forecast.deserialize(value, ctx)
        except Exception as exc:
            raise ValueError(f"not a forecast: {type(exc).__name__}: {exc}") from None
        if self.kind == "protobuf":
            from google.protobuf.json_format import MessageToDict

            obj = MessageToDict(
                obj, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            obj["ts"], obj["produced_at"] = int(obj["ts"]), int(obj["produced_at"])
            obj["source"]["offset"] = int(obj["source"]["offset"])
        try:
            return msgspec.convert(obj, Forecast)
        except msgspec.ValidationError as exc:
            raise ValueError(f"not a forecast: {exc}") from None

    def _serialize(self, serdes: _Serdes, record: Any, topic: str) -> bytes:
        ctx = SerializationContext(topic or self.forecasts_topic, MessageField.VALUE)
        try:
            out = serdes.serialize(record, ctx)
        except SchemaRegistryError as exc:
            raise RegistryUnavailable(f"schema lookup for {ctx.topic}: {exc}") from None
        except Exception as exc:
            if _transport_error(exc):
                raise RegistryUnavailable(self._unreachable(exc)) from None
            raise
        assert out is not None  # only None in, None out
        return out

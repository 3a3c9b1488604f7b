"""Typed, frozen settings: config.toml, overridden by TICKCAST_<SECTION>__<KEY> from the environment.

Secrets (SASL password, OIDC client secret, TLS key password, Redis password, and any librdkafka
property of `[kafka.client]` that holds one) come from the environment only: a secret in the file is
a configuration error, and a secret is never part of any message or log line (SecretStr).

`[kafka.client]` passes librdkafka properties through as they are (`"ssl.ca.location" = ...`, or
`TICKCAST_KAFKA__CLIENT__SSL_CA_LOCATION` with underscores for dots); librdkafka itself checks
them when the first client is made (stream/kafka.py). The typed `kafka.security_protocol`,
`kafka.sasl_*` and `kafka.ssl_*` keys cover the common cases and are checked together here: a
SASL mechanism without credentials, a client certificate without its key, a CA file that is not
there is one error naming the key, before anything connects.

Strict where a typo would otherwise pass in silence: a value in the file must have its key's TOML
type (`max_batch = "10"` is an error; the environment has only strings, so it is parsed), and a
TICKCAST_* variable that names no setting is an error like an unknown key in the file, except the
development tooling's own variables listed in TOOLING_ENV.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stream.errors import ConfigError

ENV_PREFIX = "TICKCAST_"
DEFAULT_CONFIG = Path("config.toml")

#: Keys that may only be set from the environment.
SECRET_KEYS = {
    ("kafka", "sasl_password"),
    ("kafka", "sasl_oauthbearer_client_secret"),
    ("kafka", "ssl_key_password"),
    ("redis", "password"),
    ("format", "registry_user_info"),
}

#: Words that make a librdkafka property of `[kafka.client]` a secret (sasl.password,
#: ssl.key.password, ssl.keystore.password, sasl.oauthbearer.client.secret, ssl.key.pem,
#: sasl.oauthbearer.config, sasl.oauthbearer.assertion.private.key.*): environment only, and
#: kept as SecretStr so no dump or message shows it.
_SECRET_PROPERTY_WORDS = ("password", "secret", "key.pem", "private.key", "oauthbearer.config")

#: Client properties tickcast sets itself, for its delivery guarantee or from a typed key: a
#: passthrough value would be overridden or break the commit order, so it is refused by name.
OWNED_PROPERTIES = {
    "bootstrap.servers": "use kafka.bootstrap_servers",
    "group.id": "use kafka.group_id",
    "client.id": "use kafka.client_id",
    "session.timeout.ms": "use kafka.session_timeout_ms",
    "transactional.id": "use kafka.transactional_id_prefix and kafka.instance_id",
    "enable.auto.commit": "offsets are committed only after delivery",
    "enable.auto.offset.store": "offsets are committed only after delivery",
    "isolation.level": "tickcast reads committed ticks only",
    "enable.idempotence": "the producer is idempotent for the delivery guarantee",
}


def is_secret_property(name: str) -> bool:
    """Whether the librdkafka property `name` holds a secret."""
    return any(word in name for word in _SECRET_PROPERTY_WORDS)


def client_property_name(key: str) -> str:
    """A `[kafka.client]` key as librdkafka spells it: lower case, dots (the environment's
    `SSL_CA_LOCATION` and the file's `ssl.ca.location` are one property)."""
    return key.lower().replace("_", ".")


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML reads `ssl.ca.location = ...` as nested tables; librdkafka wants one dotted name."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = client_property_name(f"{prefix}{key}")
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


#: A passthrough property's value (librdkafka takes them all as text).
ClientValue = str | int | float | bool | SecretStr


def _librdkafka_text(value: ClientValue) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


#: TICKCAST_* variables that are not service settings: the local services (tools/localinfra.py)
#: and the fault suite (tests/faults/support.py). Any other TICKCAST_* name must name a setting;
#: tests/unit/test_config.py holds every such name used in the repository to this list.
TOOLING_ENV = frozenset(
    {
        "TICKCAST_LOCAL_DIR",
        "TICKCAST_LOCAL_KAFKA_PORT",
        "TICKCAST_LOCAL_CONTROLLER_PORT",
        "TICKCAST_LOCAL_REDIS_PORT",
        "TICKCAST_LOCAL_REGISTRY_PORT",
        "TICKCAST_REGISTRY_JAVA",
        "TICKCAST_FAULTS_FULL",
        "TICKCAST_FAULTS_SEED",
    }
)

#: librdkafka's SASL mechanisms; a typo is a configuration error naming the key, not a failure
#: deep inside the client.
SaslMechanism = Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "tickcast"
    client_id: str = "tickcast"
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = ""
    #: PLAIN and SCRAM-SHA-*: the user and its password (environment only)
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    #: OAUTHBEARER with OIDC client credentials: librdkafka fetches and refreshes the token from
    #: the endpoint itself (sasl.oauthbearer.method = oidc); the secret from the environment only
    sasl_oauthbearer_token_endpoint_url: str = ""
    sasl_oauthbearer_client_id: str = ""
    sasl_oauthbearer_client_secret: SecretStr = SecretStr("")
    sasl_oauthbearer_scope: str = ""
    #: SSL and SASL_SSL: the CA file (or folder) that signed the brokers' certificates (empty:
    #: the system's CAs), and a client certificate with its key for mutual TLS
    ssl_ca_location: str = ""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: SecretStr = SecretStr("")
    #: check that the broker's certificate names the host connected to (false: any name)
    ssl_endpoint_identification: bool = True
    #: any other librdkafka property, passed through to every client (`[kafka.client]`)
    client: dict[str, ClientValue] = Field(default_factory=dict)
    #: exactly-once: transactional.id = <prefix>-<group_id>-<instance_id>. Keep instance_id stable
    #: across restarts of one instance (so a restart fences and aborts its predecessor's open
    #: transaction at once) and distinct between instances. Empty: the host name.
    transactional_id_prefix: str = "tickcast"
    instance_id: str = ""

    @field_validator("client", mode="before")
    @classmethod
    def _client_properties(cls, table: Any) -> Any:
        if not isinstance(table, dict):
            return table
        flat = _flatten(table)
        for name in flat:
            if name in OWNED_PROPERTIES:
                raise ValueError(
                    f"kafka.client.{name} is set by tickcast ({OWNED_PROPERTIES[name]})"
                )
        return {
            name: SecretStr(str(value))
            if is_secret_property(name) and not isinstance(value, SecretStr)
            else value
            for name, value in flat.items()
        }

    def _typed_properties(self) -> dict[str, str]:
        """The librdkafka properties the typed keys give (secrets revealed: for the client only)."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.sasl_mechanism == "OAUTHBEARER" and self.sasl_oauthbearer_token_endpoint_url:
            conf["sasl.oauthbearer.method"] = "oidc"
            conf["sasl.oauthbearer.token.endpoint.url"] = self.sasl_oauthbearer_token_endpoint_url
            conf["sasl.oauthbearer.client.id"] = self.sasl_oauthbearer_client_id
            conf["sasl.oauthbearer.client.secret"] = (
                self.sasl_oauthbearer_client_secret.get_secret_value()
            )
            if self.sasl_oauthbearer_scope:
                conf["sasl.oauthbearer.scope"] = self.sasl_oauthbearer_scope
        if self.security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl.endpoint.identification.algorithm"] = (
                "https" if self.ssl_endpoint_identification else "none"
            )
        for prop, value in (
            ("ssl.ca.location", self.ssl_ca_location),
            ("ssl.certificate.location", self.ssl_certificate_location),
            ("ssl.key.location", self.ssl_key_location),
            ("ssl.key.password", self.ssl_key_password.get_secret_value()),
        ):
            if value:
                conf[prop] = value
        return conf

    def librdkafka_common(self) -> dict[str, Any]:
        """The client keys every Kafka client of tickcast shares: the typed keys' properties,
        then `[kafka.client]` passed through (it has the last word)."""
        conf: dict[str, Any] = self._typed_properties()
        conf.update(self.client_properties())
        return conf

    def client_properties(self) -> dict[str, str]:
        """`[kafka.client]` as librdkafka takes it (secrets revealed: for the client only)."""
        return {name: _librdkafka_text(value) for name, value in self.client.items()}

    def key_of(self, prop: str) -> str:
        """The setting a librdkafka property comes from, for messages."""
        if prop in self.client:
            return f"kafka.client.{prop}"
        return _TYPED_KEY.get(prop, f"kafka.client.{prop}")

    @model_validator(mode="after")
    def _security_fits_together(self, info: ValidationInfo) -> KafkaSettings:
        # The file alone is checked first (strictly typed, see _check_file), when secrets from
        # the environment are still missing: the combination is checked on the whole load only.
        if info.context and info.context.get("partial"):
            return self
        conf = self.librdkafka_common()
        key = self.key_of
        protocol = str(conf.get("security.protocol", "plaintext")).upper()
        mechanism = str(conf.get("sasl.mechanism", "")).upper()
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        if mechanism and not sasl:
            raise ValueError(
                f"{key('sasl.mechanism')} is {mechanism} but {key('security.protocol')} is"
                f" {protocol}: SASL needs SASL_SSL (or SASL_PLAINTEXT)"
            )
        if sasl and not mechanism:
            raise ValueError(
                f"{key('security.protocol')} is {protocol} but {key('sasl.mechanism')} is not set"
                " (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or GSSAPI)"
            )
        if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            for prop in ("sasl.username", "sasl.password"):
                if not conf.get(prop):
                    raise ValueError(f"{_needed(key(prop))}: SASL {mechanism} needs it")
        if mechanism == "OAUTHBEARER":
            method = str(conf.get("sasl.oauthbearer.method", "default")).lower()
            unsecure = str(conf.get("enable.sasl.oauthbearer.unsecure.jwt", "false")).lower()
            if method == "oidc":
                for prop in (
                    "sasl.oauthbearer.token.endpoint.url",
                    "sasl.oauthbearer.client.id",
                    "sasl.oauthbearer.client.secret",
                ):
                    if not conf.get(prop):
                        raise ValueError(f"{_needed(key(prop))}: OAUTHBEARER with OIDC needs it")
            elif unsecure not in ("true", "1"):
                raise ValueError(
                    f"{key('sasl.oauthbearer.token.endpoint.url')} is empty: SASL OAUTHBEARER"
                    " needs an OIDC token endpoint (with kafka.sasl_oauthbearer_client_id and"
                    " TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET)"
                )
        files = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")
        if not tls:
            for prop in (*files, "ssl.key.password"):
                if conf.get(prop):
                    raise ValueError(
                        f"{key(prop)} is set but {key('security.protocol')} is {protocol}:"
                        " TLS settings need SSL or SASL_SSL"
                    )
        cert, private = conf.get("ssl.certificate.location"), conf.get("ssl.key.location")
        if cert and not private:
            raise ValueError(
                f"{key('ssl.certificate.location')} is set without"
                f" {key('ssl.key.location')}: a client certificate needs its private key"
            )
        if private and not cert:
            raise ValueError(
                f"{key('ssl.key.location')} is set without {key('ssl.certificate.location')}:"
                " a private key needs its client certificate"
            )
        for prop in files:
            path = conf.get(prop)
            if not path or (prop == "ssl.ca.location" and path == "probe"):
                continue
            if not Path(path).exists():
                raise ValueError(f"{key(prop)}: no such file: {path}")
            if not os.access(path, os.R_OK):
                raise ValueError(f"{key(prop)}: not readable: {path}")
        return self


#: librdkafka property -> the typed key that sets it
_TYPED_KEY = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "client.id": "kafka.client_id",
    "security.protocol": "kafka.security_protocol",
    "sasl.mechanism": "kafka.sasl_mechanism",
    "sasl.username": "kafka.sasl_username",
    "sasl.password": "kafka.sasl_password",
    "sasl.oauthbearer.token.endpoint.url": "kafka.sasl_oauthbearer_token_endpoint_url",
    "sasl.oauthbearer.client.id": "kafka.sasl_oauthbearer_client_id",
    "sasl.oauthbearer.client.secret": "kafka.sasl_oauthbearer_client_secret",
    "sasl.oauthbearer.scope": "kafka.sasl_oauthbearer_scope",
    "ssl.ca.location": "kafka.ssl_ca_location",
    "ssl.certificate.location": "kafka.ssl_certificate_location",
    "ssl.key.location": "kafka.ssl_key_location",
    "ssl.key.password": "kafka.ssl_key_password",
    "ssl.endpoint.identification.algorithm": "kafka.ssl_endpoint_identification",
}


def _needed(key: str) -> str:
    """`key` is empty, and where to set it (a secret: its environment variable)."""
    section_key = key.split(".", 1)
    if tuple(section_key) in SECRET_KEYS:
        return (
            f"{key} is empty (set {ENV_PREFIX}{section_key[0].upper()}__{section_key[1].upper()})"
        )
    if key.startswith("kafka.client.") and is_secret_property(key.removeprefix("kafka.client.")):
        env = key.removeprefix("kafka.client.").upper().replace(".", "_")
        return f"{key} is empty (set {ENV_PREFIX}KAFKA__CLIENT__{env})"
    return f"{key} is empty"


class TopicsSettings(_Section):
    ticks: str = "ticks"
    forecasts: str = "forecasts"
    dead_letter: str = "ticks.dlq"
    #: Live scores (one JSON message per scored forecast, key = symbol, produced with the
    #: forecasts, so in the same transaction under exactly-once); empty: not published.
    scores: str = ""
    #: The challenger's forecasts (model.challenger); empty: the challenger is only scored.
    shadow: str = ""
    #: Used when tickcast creates the topics (demo, replay); existing topics are left alone.
    partitions: int = Field(default=6, ge=1, le=1024)


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tickcast"
    #: an ACL user (Redis >= 6); empty: the URL's, else the default user
    username: str = ""
    password: SecretStr = SecretStr("")
    socket_timeout_s: float = Field(default=2.0, gt=0)
    #: TLS (a rediss:// URL): the CA file that signed the server's certificate (empty: the
    #: system's CAs), a client certificate and its key when the server asks for one
    #: (`tls-auth-clients`), and whether the certificate must name the host connected to
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_check_hostname: bool = True

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @model_validator(mode="after")
    def _tls_fits_together(self, info: ValidationInfo) -> RedisSettings:
        tls = {
            "redis.tls_ca_file": self.tls_ca_file,
            "redis.tls_cert_file": self.tls_cert_file,
            "redis.tls_key_file": self.tls_key_file,
        }
        for key, path in tls.items():
            if path and not self.url.startswith("rediss://"):
                raise ValueError(f"{key} is set but redis.url is not a rediss:// (TLS) URL")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                ("redis.tls_cert_file", "redis.tls_key_file")
                if self.tls_cert_file
                else ("redis.tls_key_file", "redis.tls_cert_file")
            )
            raise ValueError(f"{given} is set without {missing}: a client certificate needs both")
        if info.context and info.context.get("partial"):
            return self
        for key, path in tls.items():
            if path and not Path(path).is_file():
                raise ValueError(f"{key}: no such file: {path}")
        return self

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py's keyword arguments beside the URL (secrets revealed: for the client only)."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password.get_secret_value():
            kwargs["password"] = self.password.get_secret_value()
        if self.url.startswith("rediss://"):
            kwargs["ssl_check_hostname"] = self.tls_check_hostname
            for arg, path in (
                ("ssl_ca_certs", self.tls_ca_file),
                ("ssl_certfile", self.tls_cert_file),
                ("ssl_keyfile", self.tls_key_file),
            ):
                if path:
                    kwargs[arg] = path
        return kwargs


class WindowSettings(_Section):
    size: int = Field(default=60, ge=2, le=4096)
    #: Entries kept beyond the window so that redelivered ticks get back their original window.
    #: Must cover the largest uncommitted span per symbol: one batch.
    history: int = Field(default=3072, ge=0, le=100_000)
    late_policy: Literal["dead_letter", "drop"] = "dead_letter"
    #: after Redis lost state, at most this many committed ticks per partition are read back
    rebuild_max_ticks: int = Field(default=200_000, ge=0)
    #: A tick whose event time is more than this ahead of the consumer's clock is `future`, a bad
    #: input (accepted, one tick far ahead would make every later tick of its symbol `late`).
    max_future_ms: int = Field(default=86_400_000, ge=0)


class CacheSettings(_Section):
    enabled: bool = True
    #: How long a result can serve: a redelivery comes from the uncommitted span, replayed within
    #: a restart's time; memory is rate x TTL x ~190 bytes (stream/cache.py, README "Redis memory").
    ttl_seconds: int = Field(default=120, ge=1)


class ScoringSettings(_Section):
    """Live scoring (stream/scoring.py): each forecast judged when the symbol's next tick comes."""

    enabled: bool = True
    #: symbols whose scores get a Prometheus series of their own; the rest are summed under
    #: symbol="_other" (a bounded number of series whatever the feed carries)
    symbols: list[str] = Field(default_factory=list, max_length=1000)


class ModelSettings(_Section):
    #: The artifact folder; empty means the shipped models/artifacts/CURRENT.
    path: str = ""
    #: A second artifact run on the same windows in the same batch: an artifact folder, or a
    #: version in model.path's folder of artifacts. Its forecasts go to topics.shadow (or are
    #: only scored), never to topics.forecasts; `tickcast promote` makes it CURRENT.
    challenger: str = ""
    backend: Literal["onnx", "tensorflow"] = "onnx"
    horizon: int = Field(default=1, ge=1)
    intra_op_threads: int = Field(default=1, ge=1, le=64)


class ProcessingSettings(_Section):
    guarantee: Literal["at-least-once", "exactly-once"] = "at-least-once"
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    poll_timeout_s: float = Field(default=0.2, gt=0, le=1.0)
    max_message_bytes: int = Field(default=65_536, ge=64, le=10_485_760)
    #: A dead letter's value is cut to this many bytes (headers error.truncated, source.sha256).
    #: 0: what the broker accepts for the dead-letter topic, less room for key and headers.
    dead_letter_max_bytes: int = Field(default=0, ge=0, le=2**31 - 1)
    #: at-least-once batches published and awaiting delivery reports while the next is processed
    max_in_flight: int = Field(default=2, ge=1, le=16)
    #: delivered offsets are committed this often (or once max_batch ticks await a commit)
    commit_interval_s: float = Field(default=0.1, gt=0, le=10)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    redis_retry_max_s: float = Field(default=5.0, gt=0)

    @field_validator("dead_letter_max_bytes")
    @classmethod
    def _room_to_read(cls, size: int) -> int:
        if 0 < size < 1024:
            raise ValueError("must be 0 (derived from the broker) or at least 1024")
        return size


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9400, ge=0, le=65535)


class ServeSettings(_Section):
    """`tickcast serve`, the HTTP API on the stream's model and cache (stream/serve/)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    #: windows in one POST /v1/predict/batch at most (one model call for all of them)
    max_batch_windows: int = Field(default=1000, ge=1, le=100_000)
    #: a request body longer than this is refused with 413 before it is parsed
    # 2 MiB: room for serve.max_batch_windows (1,000) windows of 60 full-precision prices (~1.1 MB)
    max_body_bytes: int = Field(default=2_097_152, ge=1024, le=67_108_864)
    #: server processes (each loads the model once); 0: one per CPU
    workers: int = Field(default=1, ge=0, le=64)
    #: seconds a request may wait for Redis: each Redis call times out at half of it (and at
    #: redis.socket_timeout_s); then a forecast is answered from the model alone, uncached, and a
    #: latest forecast or /readyz is 503. Redis answers in well under a millisecond; this only has
    #: to outlast a busy moment, and bounds what a hung Redis costs a request.
    deadline_s: float = Field(default=0.5, gt=0, le=60)


class FormatSettings(_Section):
    """Ticks and forecasts on the wire (DESIGN.md: Formats): JSON, or a Schema Registry format."""

    kind: Literal["json", "avro", "protobuf", "json-schema"] = "json"
    #: any Confluent-compatible registry; `mock://<name>` is confluent-kafka's in-process one
    registry_url: str = ""
    #: "user:password" for the registry's basic auth (a secret: from the environment only)
    registry_user_info: SecretStr = SecretStr("")
    registry_ca_location: str = ""
    #: register the shipped schemas at start; else `tickcast schemas register` must have
    auto_register: bool = False
    #: the longest one registry request may take (connect, send, answer); confluent-kafka's
    #: client has none by default, and a registry that accepted and never answered held the
    #: loop for good
    registry_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _registry_named(self, info: ValidationInfo) -> FormatSettings:
        if (info.context or {}).get("partial"):
            return self
        if self.kind != "json" and not self.registry_url:
            raise ValueError(
                f"format.kind {self.kind!r} needs format.registry_url (the Schema Registry)"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicsSettings = TopicsSettings()
    redis: RedisSettings = RedisSettings()
    window: WindowSettings = WindowSettings()
    cache: CacheSettings = CacheSettings()
    scoring: ScoringSettings = ScoringSettings()
    model: ModelSettings = ModelSettings()
    processing: ProcessingSettings = ProcessingSettings()
    metrics: MetricsSettings = MetricsSettings()
    serve: ServeSettings = ServeSettings()
    format: FormatSettings = FormatSettings()

    @model_validator(mode="after")
    def _output_topics_are_distinct(self) -> Settings:
        # A shadow or scores topic equal to another would put the challenger's forecasts on
        # the main topic, or feed forecasts (which decode as ticks) back into the input.
        t = self.topics
        named = [("topics.ticks", t.ticks), ("topics.forecasts", t.forecasts)]
        named += [("topics.dead_letter", t.dead_letter)]
        named += [
            (k, v) for k, v in (("topics.scores", t.scores), ("topics.shadow", t.shadow)) if v
        ]
        seen: dict[str, str] = {}
        for key, topic in named:
            if topic in seen:
                raise ValueError(
                    f"{key} and {seen[topic]} are both {topic!r}: each needs its own topic"
                )
            seen[topic] = key
        return self

    @model_validator(mode="after")
    def _history_covers_uncommitted_span(self) -> Settings:
        # After a crash, every delivered-but-uncommitted tick (fewer than max_batch) and every
        # in-flight batch is redelivered; a redelivered tick must still find its window in the
        # history, or it is skipped as too_old.
        span = self.processing.max_batch * (self.processing.max_in_flight + 1)
        if self.window.history < span:
            raise ValueError(
                f"window.history ({self.window.history}) must be at least processing.max_batch x"
                f" (processing.max_in_flight + 1) = {span}, the ticks a crash can redeliver"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _CONFIG_FILE_FOR_LOAD.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


# The file to read is chosen per load(); pydantic-settings asks for sources through a classmethod.
_CONFIG_FILE_FOR_LOAD: dict[str, Path | None] = {}

_SECTIONS = set(Settings.model_fields)


def _check_file(path: Path) -> None:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path} is not valid TOML: {exc}") from None
    for section, body in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"config error: unknown section [{section}] in {path}")
        if not isinstance(body, dict):
            raise ConfigError(f"config error: {section} in {path} must be a [section] table")
        for key in body:
            if (section, key) in SECRET_KEYS:
                env = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
                raise ConfigError(
                    f"config error: {section}.{key} is a secret; set it in the environment as {env},"
                    f" not in {path}"
                )
        client = body.get("client") if section == "kafka" else None
        if isinstance(client, dict):
            for name in _flatten(client):
                if is_secret_property(name):
                    env = f"{ENV_PREFIX}KAFKA__CLIENT__{name.upper().replace('.', '_')}"
                    raise ConfigError(
                        f"config error: kafka.client.{name} is a secret; set it in the environment"
                        f" as {env}, not in {path}"
                    )
        # Strict types: the file is typed, so "10" for an integer is a mistake, not a number.
        # The whole load validates again afterwards (lax, for the environment's strings).
        model = cast("type[BaseModel]", Settings.model_fields[section].annotation)
        try:
            model.model_validate(body, strict=True, context={"partial": True})
        except ValidationError as exc:
            first: dict[str, Any] = dict(exc.errors()[0])
            first["loc"] = (section, *exc.errors()[0]["loc"])
            raise ConfigError(f"config error: {_describe(first, {}, path)}") from None


def _names_a_setting(model: type[BaseModel], parts: list[str]) -> bool:
    """Whether the lower-cased path `parts` names a field of `model` (or lies inside a free-form
    table, such as a dict of client properties)."""
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    inner = field.annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return _names_a_setting(inner, parts[1:])
    return getattr(inner, "__origin__", inner) is dict


def _check_env(environ: dict[str, str]) -> None:
    """A TICKCAST_* variable must name a setting (TICKCAST_<SECTION>__<KEY>) or be a tooling
    variable (TOOLING_ENV): a misspelt override is an error, never silently ignored."""
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in TOOLING_ENV:
            continue
        parts = upper[len(ENV_PREFIX) :].lower().split("__")
        if parts[:2] == ["kafka", "client"] and len(parts) == 2:
            raise ConfigError(
                f"config error: {name}: kafka.client is a table of librdkafka properties; set"
                f" each as {ENV_PREFIX}KAFKA__CLIENT__<PROPERTY> (dots as underscores)"
            )
        if len(parts) < 2 or not all(parts) or not _names_a_setting(Settings, parts):
            if len(parts) >= 2 and parts[0] in _SECTIONS and all(parts):
                key = ".".join(parts)
                raise ConfigError(f"config error: unknown key {key} (from {name})")
            raise ConfigError(
                f"config error: {name} names no setting; use {ENV_PREFIX}<SECTION>__<KEY> with a"
                f" key of config.toml (sections: {', '.join(sorted(_SECTIONS))})"
            )


def _names_keys(error: dict[str, Any]) -> bool:
    """Whether a validator's message names its keys itself (`kafka.client.x is set by ...`)."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg.startswith(tuple(f"{section}." for section in _SECTIONS))


def _describe(error: dict[str, Any], env: dict[str, str], file: Path | None) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    var = ENV_PREFIX + "__".join(str(p).upper() for p in error["loc"])
    origin = (
        f" (from {var})" if var in {k.upper() for k in env} else f" (in {file})" if file else ""
    )
    if error["type"] == "extra_forbidden":
        return f"unknown key {loc}{origin}"
    if not error["loc"] or (
        error["type"] == "value_error" and (len(error["loc"]) == 1 or _names_keys(error))
    ):
        # A rule across keys: its message names them (and the input, which may hold a secret
        # from the environment, is not shown).
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{loc}: {error['msg']}, got {error.get('input')!r}{origin}"


def load(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings from `path` (default ./config.toml if present) and the environment.

    Raises ConfigError naming the first bad key.
    """
    env = dict(os.environ if environ is None else environ)
    file: Path | None
    if path is None:
        file = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    else:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config error: --config {file}: no such file")
    if file is not None:
        _check_file(file)
    _check_env(env)
    _CONFIG_FILE_FOR_LOAD["path"] = file
    saved = os.environ.copy()
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(env)
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"config error: {_describe(dict(first), env, file)}") from None
    finally:
        if environ is not None:
            os.environ.clear()
            os.environ.update(saved)

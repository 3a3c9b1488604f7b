"""Typed, frozen settings: config.toml, overridden by TICKCAST_<SECTION>__<KEY> from the environment.

Secrets (SASL password, Redis password) come from the environment only: a secret in the file is a
configuration error, and a secret is never part of any message or log line (SecretStr).

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
SECRET_KEYS = {("kafka", "sasl_password"), ("redis", "password")}

#: TICKCAST_* variables that are not service settings: the local services (tools/localinfra.py)
#: and the fault suite (tests/faults/support.py). Any other TICKCAST_* name must name a setting;
#: tests/unit/test_config.py holds every such name used in the repository to this list.
TOOLING_ENV = frozenset(
    {
        "TICKCAST_LOCAL_DIR",
        "TICKCAST_LOCAL_KAFKA_PORT",
        "TICKCAST_LOCAL_CONTROLLER_PORT",
        "TICKCAST_LOCAL_REDIS_PORT",
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
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    #: exactly-once: transactional.id = <prefix>-<group_id>-<instance_id>. Keep instance_id stable
    #: across restarts of one instance (so a restart fences and aborts its predecessor's open
    #: transaction at once) and distinct between instances. Empty: the host name.
    transactional_id_prefix: str = "tickcast"
    instance_id: str = ""

    def librdkafka_common(self) -> dict[str, Any]:
        """The client keys every Kafka client of tickcast shares."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        return conf


class TopicsSettings(_Section):
    ticks: str = "ticks"
    forecasts: str = "forecasts"
    dead_letter: str = "ticks.dlq"
    #: Used when tickcast creates the topics (demo, replay); existing topics are left alone.
    partitions: int = Field(default=6, ge=1, le=1024)


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tickcast"
    password: SecretStr = SecretStr("")
    socket_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


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


class ModelSettings(_Section):
    #: The artifact folder; empty means the shipped models/artifacts/CURRENT.
    path: str = ""
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
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=67_108_864)
    #: server processes (each loads the model once); 0: one per CPU
    workers: int = Field(default=1, ge=0, le=64)


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
    model: ModelSettings = ModelSettings()
    processing: ProcessingSettings = ProcessingSettings()
    metrics: MetricsSettings = MetricsSettings()
    serve: ServeSettings = ServeSettings()

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
        # Strict types: the file is typed, so "10" for an integer is a mistake, not a number.
        # The whole load validates again afterwards (lax, for the environment's strings).
        model = cast("type[BaseModel]", Settings.model_fields[section].annotation)
        try:
            model.model_validate(body, strict=True)
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
        if len(parts) < 2 or not all(parts) or not _names_a_setting(Settings, parts):
            if len(parts) >= 2 and parts[0] in _SECTIONS and all(parts):
                key = ".".join(parts)
                raise ConfigError(f"config error: unknown key {key} (from {name})")
            raise ConfigError(
                f"config error: {name} names no setting; use {ENV_PREFIX}<SECTION>__<KEY> with a"
                f" key of config.toml (sections: {', '.join(sorted(_SECTIONS))})"
            )


def _describe(error: dict[str, Any], env: dict[str, str], file: Path | None) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    var = ENV_PREFIX + "__".join(str(p).upper() for p in error["loc"])
    origin = (
        f" (from {var})" if var in {k.upper() for k in env} else f" (in {file})" if file else ""
    )
    if error["type"] == "extra_forbidden":
        return f"unknown key {loc}{origin}"
    if not error["loc"]:  # a rule across keys; its message names them
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

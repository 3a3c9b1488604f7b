"""Wires the service from settings: Redis, model, store, cache, pipeline, Kafka clients, metrics.

The only place that knows how the parts fit; `tickcast run` and `tickcast demo` both call `build`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry

from stream.cache import ForecastCache
from stream.checkpoint import AtLeastOnce, Checkpoint, Topics, Transactional
from stream.config import Settings
from stream.errors import UnreachableError
from stream.kafka import (
    ClientEvents,
    EndOffsets,
    Sink,
    Source,
    check_reachable,
    consumer_config,
    dead_letter_limit,
    ensure_topics,
    producer_config,
    read_ranges,
)
from stream.metrics import Health, Metrics, serve
from stream.pipeline import Pipeline
from stream.predictor import Predictor, load_challenger, load_predictor
from stream.rebuild import Rebuilder
from stream.redisio import Commands
from stream.reload import ModelReloader
from stream.runner import Runner, RunnerConfig
from stream.windows import WindowStore

if TYPE_CHECKING:  # the registry serdes are imported only when a registry format is configured
    from stream.formats import RegistryFormat

log = logging.getLogger(__name__)


@dataclass
class Service:
    runner: Runner
    metrics: Metrics
    health: Health
    http: ThreadingHTTPServer | None
    redis: redis.Redis
    model_version: str
    #: asks for a model reload at the next batch boundary (SIGHUP)
    reload: Callable[[], None]

    def close(self) -> None:
        if self.runner.upkeep.end_offsets is not None:
            self.runner.upkeep.end_offsets.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.redis.close()


def redis_client(settings: Settings) -> redis.Redis:
    client = redis.Redis.from_url(
        settings.redis.url,
        # ACL user, password, TLS files (redis.username, redis.password, redis.tls_*)
        **settings.redis.connection_kwargs(),
        socket_timeout=settings.redis.socket_timeout_s,
        socket_connect_timeout=settings.redis.socket_timeout_s,
        decode_responses=False,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise UnreachableError(
            f"cannot reach Redis at {_safe_url(settings.redis.url)} (redis.url): {exc}"
        ) from None
    return client


def delete_keys(client: redis.Redis, key_prefix: str) -> int:
    """Delete every key under `key_prefix:` (a demo's or benchmark's windows and cache), on every
    node of a cluster."""
    return Commands(client).delete_matching(f"{key_prefix}:*")


def _safe_url(url: str) -> str:
    """The URL without any password in it, for messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def transactional_id(settings: Settings) -> str:
    instance = settings.kafka.instance_id or socket.gethostname()
    return f"{settings.kafka.transactional_id_prefix}-{settings.kafka.group_id}-{instance}"


def registry_format(settings: Settings) -> RegistryFormat | None:
    """The Schema Registry format of ticks and forecasts; None for JSON (the fast path)."""
    if settings.format.kind == "json":
        return None
    from stream.formats import RegistryFormat

    return RegistryFormat(settings.format, settings.topics.ticks, settings.topics.forecasts)


def build(settings: Settings, registry: CollectorRegistry | None = None) -> Service:
    """Check the outside world, then assemble the service. Raises UnreachableError, ModelError."""
    check_reachable(settings)
    client = redis_client(settings)
    predictor = load_predictor(settings.model, settings.window.size)
    metrics = Metrics(registry or CollectorRegistry())
    health = Health(model_loaded=True, redis_ok=True, redis_address=_safe_url(settings.redis.url))
    metrics.set_model(predictor.version)

    def kafka_down(why: str) -> None:
        health.kafka_down = why

    def kafka_up() -> None:
        health.kafka_down = ""

    events = ClientEvents(
        settings.kafka.bootstrap_servers,
        on_error=lambda code: metrics.kafka_errors.labels(code=code).inc(),
        on_down=kafka_down,
        on_up=kafka_up,
        on_stats=metrics.kafka_stats,
    )

    ensure_topics(
        settings,
        [settings.topics.ticks, settings.topics.forecasts, settings.topics.dead_letter]
        + ([settings.topics.scores] if settings.topics.scores else [])
        + (
            [settings.topics.shadow] if settings.topics.shadow and settings.model.challenger else []
        ),
    )
    store = WindowStore(
        client,
        settings.redis.key_prefix,
        settings.window.size,
        settings.window.history,
        settings.topics.ticks,
    )
    cache = ForecastCache(
        client,
        settings.redis.key_prefix,
        predictor.version,
        predictor.horizon,
        settings.cache.ttl_seconds,
        settings.cache.enabled,
    )
    pipeline = Pipeline(
        store,
        cache,
        predictor,
        settings.topics.ticks,
        clock_ms=lambda: int(time.time() * 1000),
        late_policy=settings.window.late_policy,
        max_future_ms=settings.window.max_future_ms,
        dead_letter_max_bytes=settings.processing.dead_letter_max_bytes
        or dead_letter_limit(settings, settings.topics.dead_letter),
        scoring=settings.scoring.enabled,
    )
    metrics.scores.symbols = frozenset(settings.scoring.symbols)
    pipeline.challenger = load_challenger(settings.model, settings.window.size)
    pipeline.on_challenger_error = metrics.record_inference_error
    if pipeline.challenger is not None:
        log.info(
            "challenger model=%s forecasts=%s",
            pipeline.challenger.version,
            settings.topics.shadow or "(scored only)",
        )
    exactly_once = settings.processing.guarantee == "exactly-once"
    processing = settings.processing
    source = Source(
        {**consumer_config(settings), **events.config("consumer")},
        on_error=lambda code: metrics.kafka_errors.labels(code=code).inc(),
    )
    sink = Sink(
        {
            **producer_config(settings, transactional_id(settings) if exactly_once else None),
            **events.config("producer"),
        }
    )
    end_offsets = EndOffsets({**settings.kafka.librdkafka_common(), **events.config("lag")})
    topics = Topics(
        settings.topics.forecasts,
        settings.topics.dead_letter,
        settings.topics.scores,
        settings.topics.shadow,
    )
    checkpoint: Checkpoint = (
        Transactional(source, sink, topics)
        if exactly_once
        else AtLeastOnce(
            source,
            sink,
            topics,
            commit_interval_s=processing.commit_interval_s,
            commit_after=processing.max_batch,
        )
    )
    checkpoint.observe = lambda stage, seconds: metrics.batch_seconds.labels(stage=stage).observe(
        seconds
    )
    config = RunnerConfig(
        max_batch=processing.max_batch,
        poll_timeout_s=processing.poll_timeout_s,
        max_message_bytes=processing.max_message_bytes,
        max_in_flight=processing.max_in_flight,
        redis_retry_max_s=processing.redis_retry_max_s,
        shutdown_timeout_s=processing.shutdown_timeout_s,
        model_thread=not exactly_once,
    )
    rebuild_conf = {
        **consumer_config(settings, group_id=f"{settings.kafka.group_id}-rebuild"),
        **events.config("rebuild"),
    }
    rebuilder = Rebuilder(
        lambda ranges: read_ranges(rebuild_conf, ranges),
        store,
        processing.max_message_bytes,
        settings.window.rebuild_max_ticks,
        on_rebuilt=lambda n: metrics.ticks.labels(outcome="rebuilt").inc(n),
        on_recreated=lambda partition: metrics.topic_recreated.inc(),
    )

    wire = registry_format(settings)
    if wire is not None:
        wire.check()  # the subjects have their schemas (or get them now, with auto_register)
        pipeline.parse_tick = rebuilder.parse = wire.tick_fields
        checkpoint.encode_forecast = wire.encode_forecast

    def swap(new: Predictor) -> None:
        # Between batches, on the loop's thread: the next batch is computed by the new model
        # and looked up and cached under its version.
        pipeline.predictor = new
        cache.model_version = new.version
        metrics.set_model(new.version)
        metrics.model_reloads.inc()

    reloader = ModelReloader(settings.model, settings.window.size, predictor, swap)
    runner = Runner(
        config,
        source,
        checkpoint,
        pipeline,
        metrics,
        health,
        rebuilder=rebuilder,
        trim=lambda committed: store.trim({p: o for (_, p), o in committed.items()}),
        end_offsets=end_offsets,
        between_batches=reloader.between_batches,
    )
    source.subscribe(
        [settings.topics.ticks],
        on_assign=runner.on_assign,
        on_revoke=runner.on_revoke,
        on_lost=runner.on_lost,
        paused=True,
    )
    http = None
    if settings.metrics.enabled:
        try:
            http = serve(metrics, health, settings.metrics.host, settings.metrics.port)
        except OSError as exc:
            raise UnreachableError(
                f"cannot serve metrics on {settings.metrics.host}:{settings.metrics.port} "
                f"(metrics.host, metrics.port): {exc.strerror}"
            ) from None
    return Service(
        runner=runner,
        metrics=metrics,
        health=health,
        http=http,
        redis=client,
        model_version=predictor.version,
        reload=reloader.request,
    )

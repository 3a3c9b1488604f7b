"""Wires the service from settings: Redis, model, store, cache, pipeline, Kafka clients, metrics.

The only place that knows how the parts fit; `tickcast run` and `tickcast demo` both call `build`.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer

import redis
from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry

from stream.cache import ForecastCache
from stream.config import Settings
from stream.errors import UnreachableError
from stream.kafka import check_reachable, consumer_config, ensure_topics, producer_config
from stream.metrics import Health, Metrics, serve
from stream.pipeline import Pipeline
from stream.predictor import Predictor, load_predictor
from stream.rebuild import Rebuilder
from stream.redisio import Commands
from stream.reload import ModelReloader
from stream.runner import Runner, RunnerConfig
from stream.windows import WindowStore

log = logging.getLogger(__name__)


@dataclass
class Service:
    runner: Runner
    metrics: Metrics
    health: Health
    http: ThreadingHTTPServer | None
    redis: redis.Redis
    model_version: str

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        self.redis.close()


def redis_client(settings: Settings) -> redis.Redis:
    password = settings.redis.password.get_secret_value() or None
    client = redis.Redis.from_url(
        settings.redis.url,
        password=password,
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


def build(settings: Settings, registry: CollectorRegistry | None = None) -> Service:
    """Check the outside world, then assemble the service. Raises UnreachableError, ModelError."""
    check_reachable(settings)
    client = redis_client(settings)
    predictor = load_predictor(settings.model, settings.window.size)
    metrics = Metrics(registry or CollectorRegistry())
    health = Health(model_loaded=True, redis_ok=True)
    metrics.set_model(predictor.version)

    ensure_topics(
        settings, [settings.topics.ticks, settings.topics.forecasts, settings.topics.dead_letter]
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
    )
    exactly_once = settings.processing.guarantee == "exactly-once"
    producer = Producer(
        producer_config(settings, transactional_id(settings) if exactly_once else None)
    )
    if exactly_once:
        producer.init_transactions(30)
    config = RunnerConfig(
        forecasts_topic=settings.topics.forecasts,
        dead_letter_topic=settings.topics.dead_letter,
        max_batch=settings.processing.max_batch,
        poll_timeout_s=settings.processing.poll_timeout_s,
        max_message_bytes=settings.processing.max_message_bytes,
        exactly_once=exactly_once,
        redis_retry_max_s=settings.processing.redis_retry_max_s,
        max_in_flight=settings.processing.max_in_flight,
        commit_interval_s=settings.processing.commit_interval_s,
        shutdown_timeout_s=settings.processing.shutdown_timeout_s,
    )
    runner_ref: list[Runner] = []
    consumer = Consumer(
        {
            **consumer_config(settings),
            "on_commit": lambda err, tps: runner_ref[0].on_commit(err, tps),
        }
    )
    rebuilder = Rebuilder(
        consumer_config(settings, group_id=f"{settings.kafka.group_id}-rebuild"),
        settings.topics.ticks,
        store,
        settings.processing.max_message_bytes,
        settings.window.rebuild_max_ticks,
        on_rebuilt=lambda n: metrics.ticks.labels(outcome="rebuilt").inc(n),
        retry_max_s=settings.processing.redis_retry_max_s,
    )

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
        consumer,
        producer,
        pipeline,
        metrics,
        health,
        rebuilder=rebuilder,
        between_batches=reloader.between_batches,
        on_sighup=reloader.request,
    )
    runner_ref.append(runner)
    consumer.subscribe(
        [settings.topics.ticks],
        on_assign=runner.on_assign,
        on_revoke=runner.on_revoke,
        on_lost=runner.on_lost,
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
    )

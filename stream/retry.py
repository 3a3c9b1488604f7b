"""Redis steps of the loop, retried with capped exponential backoff (redis-py's Retry) while
Redis is unavailable, with /readyz and the error counter kept in step. A stop request ends the
retrying: the step is abandoned (its batch stays uncommitted and is redone after the restart)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from stream.errors import RegistryUnavailable, StoreUnavailable
from stream.metrics import Health, Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Abandoned(Exception):
    """A stop request arrived while a step waited for Redis."""


class RedisRetry:
    def __init__(
        self, metrics: Metrics, health: Health, stopping: Callable[[], bool], cap_s: float
    ) -> None:
        self.metrics = metrics
        self.health = health
        self.stopping = stopping
        self._retry = Retry(ExponentialBackoff(cap=cap_s, base=0.05), -1, (StoreUnavailable,))

    def __call__(self, step: Callable[[], T]) -> T | None:
        """`step()`, retried while it raises StoreUnavailable; None if a stop came meanwhile."""

        def failed(exc: Exception) -> None:
            # The Schema Registry (a tick's writer schema not known yet) is waited for the same
            # way, and reported as itself.
            if isinstance(exc, RegistryUnavailable):
                self.health.registry_down = str(exc)
            else:
                self.metrics.redis_errors.inc()
                self.health.redis_ok = False
            self.health.beat()  # waiting for Redis is not a stuck loop (/healthz)
            if self.stopping():
                raise _Abandoned from exc
            what = "schema registry" if isinstance(exc, RegistryUnavailable) else "redis"
            log.warning("%s unavailable, retrying: %s", what, exc)

        try:
            result = self._retry.call_with_retry(step, failed)
        except _Abandoned:
            log.warning("a dependency is unavailable while stopping; batch left uncommitted")
            return None
        if not self.health.redis_ok:
            log.info("redis reachable again; resuming")
            self.health.redis_ok = True
        if self.health.registry_down:
            log.info("schema registry reachable again; resuming")
            self.health.registry_down = ""
        return result

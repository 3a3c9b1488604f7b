"""Fixtures for the HTTP API: the real artifact, real Redis, the app in process (TestClient)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from stream import config
from stream.predictor import Predictor, load_predictor
from stream.serve.app import create_app


@pytest.fixture(scope="session")
def predictor() -> Predictor:
    """The shipped artifact (models/artifacts/CURRENT), loaded once for the session."""
    return load_predictor(config.load(environ={}).model, 60)


@pytest.fixture
def api(
    predictor: Predictor, redis_url: str, key_prefix: str
) -> Iterator[Callable[..., TestClient]]:
    """Make in-process API clients on this test's key prefix; `environ` overrides settings.
    Keys under any other prefix a client was given are deleted afterwards too."""
    made: list[tuple[TestClient, redis.Redis]] = []
    prefixes: set[str] = set()

    def make(reload_every_s: float = 5.0, **environ: str) -> TestClient:
        env = {
            "TICKCAST_REDIS__URL": redis_url,
            "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
            **environ,
        }
        settings = config.load(environ=env)
        if settings.redis.url == redis_url and settings.redis.key_prefix != key_prefix:
            prefixes.add(settings.redis.key_prefix)
        client = redis.Redis.from_url(settings.redis.url, socket_timeout=2)
        served = predictor if not settings.model.path else load_predictor(settings.model, 60)
        http = TestClient(create_app(settings, served, client, reload_every_s=reload_every_s))
        http.__enter__()  # runs the lifespan: the model worker starts
        made.append((http, client))
        return http

    yield make
    for http, client in made:
        http.__exit__(None, None, None)
        client.close()
    if prefixes:
        shared = redis.Redis.from_url(redis_url)
        for prefix in prefixes:
            keys = list(shared.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                shared.delete(*keys)
        shared.close()


def fields(forecast: dict[str, Any]) -> dict[str, Any]:
    """A forecast without the two fields that may differ between copies of it."""
    return {k: v for k, v in forecast.items() if k not in ("cached", "produced_at")}

"""The forecast cache against a real Redis."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.cache import ForecastCache, digest
from stream.errors import StoreUnavailable

pytestmark = pytest.mark.integration

WINDOW_A = np.linspace(1900.0, 1960.0, 60)
WINDOW_B = WINDOW_A + 0.01
OUT_A = np.array([-0.0012, 0.0001, 0.0015])
OUT_B = np.array([-0.002, -0.0003, 0.0009])


def make(client: redis.Redis, prefix: str, version: str = "v1", **kw: Any) -> ForecastCache:
    return ForecastCache(client, prefix, model_version=version, horizon=1, ttl_seconds=600, **kw)


def test_digest_is_over_the_exact_window_bytes_and_horizon() -> None:
    d = digest(WINDOW_A, 1)
    assert len(d) == 32 and int(d, 16) >= 0
    assert digest(WINDOW_A.copy(), 1) == d
    assert digest(WINDOW_A[::-1][::-1], 1) == d  # layout does not matter, values do
    assert digest(WINDOW_A, 2) != d
    nudged = WINDOW_A.copy()
    nudged[0] = np.nextafter(nudged[0], np.inf)
    assert digest(nudged, 1) != d


def test_put_then_get_is_bit_identical(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    da, db = digest(WINDOW_A, 1), digest(WINDOW_B, 1)
    assert cache.get_many([da, db]) == [None, None]

    cache.put_many([(da, OUT_A)])
    got = cache.get_many([db, da])
    assert got[0] is None
    hit = got[1]
    assert hit is not None
    assert hit.dtype == np.float64 and hit.tobytes() == OUT_A.tobytes()
    assert not hit.flags.writeable


def test_entries_expire(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    d = digest(WINDOW_A, 1)
    cache.put_many([(d, OUT_A)])
    ttl = redis_client.ttl(cache.key(d))
    assert isinstance(ttl, int) and 0 < ttl <= 600
    assert cache.key(d) == f"{key_prefix}:fc:v1:{d}"


def test_scoped_by_model_version(redis_client: redis.Redis, key_prefix: str) -> None:
    old, new = make(redis_client, key_prefix, "v1"), make(redis_client, key_prefix, "v2")
    d = digest(WINDOW_A, 1)
    old.put_many([(d, OUT_A)])
    assert new.get_many([d]) == [None]
    new.put_many([(d, OUT_B)])
    [from_old] = old.get_many([d])
    [from_new] = new.get_many([d])
    assert from_old is not None and from_new is not None
    assert from_old.tobytes() == OUT_A.tobytes()
    assert from_new.tobytes() == OUT_B.tobytes()


def test_one_round_trip_each_way(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(redis_client, key_prefix)
    items = [(digest(WINDOW_A + i, 1), OUT_A + i) for i in range(50)]
    sent: list[str] = []
    executes: list[int] = []
    execute_command = redis_client.execute_command
    make_pipeline = redis_client.pipeline

    def counting_command(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return execute_command(*args, **options)

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            executes.append(len(pipe.command_stack))
            return run(*a, **k)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    monkeypatch.setattr(redis_client, "execute_command", counting_command)
    monkeypatch.setattr(redis_client, "pipeline", counting_pipeline)

    cache.put_many(items)
    # either one command (a script) or one pipeline execute: one round trip
    assert len(sent) + len(executes) == 1
    assert executes in ([], [50])
    sent.clear()
    got = cache.get_many([d for d, _ in items])
    assert sent == ["MGET"] and len(executes) <= 1
    assert all(
        g is not None and g.tobytes() == o.tobytes() for g, (_, o) in zip(got, items, strict=True)
    )


def test_empty_calls_cost_nothing(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(redis_client, key_prefix)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no command expected")

    monkeypatch.setattr(redis_client, "execute_command", forbidden)
    monkeypatch.setattr(redis_client, "pipeline", forbidden)
    assert cache.get_many([]) == []
    cache.put_many([])


def test_disabled_cache_misses_and_stores_nothing(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    on, off = make(redis_client, key_prefix), make(redis_client, key_prefix, enabled=False)
    d = digest(WINDOW_A, 1)
    off.put_many([(d, OUT_A)])
    assert on.get_many([d]) == [None]
    on.put_many([(d, OUT_A)])
    assert off.get_many([d, d]) == [None, None]


def test_a_foreign_value_is_a_miss(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    d = digest(WINDOW_A, 1)
    redis_client.set(cache.key(d), b"odd")
    assert cache.get_many([d]) == [None]


def test_redis_down_is_store_unavailable(key_prefix: str) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cache = make(dead, key_prefix)
    with pytest.raises(StoreUnavailable):
        cache.get_many([digest(WINDOW_A, 1)])
    with pytest.raises(StoreUnavailable):
        cache.put_many([(digest(WINDOW_A, 1), OUT_A)])
    dead.close()

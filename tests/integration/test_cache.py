"""The forecast cache against a real Redis."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.cache import ForecastCache, digest, digests
from stream.errors import StoreUnavailable

pytestmark = pytest.mark.integration

WINDOW_A = np.linspace(1900.0, 1960.0, 60)
WINDOW_B = WINDOW_A + 0.01
OUT_A = np.array([-0.0012, 0.0001, 0.0015])
OUT_B = np.array([-0.002, -0.0003, 0.0009])


def make(client: redis.Redis, prefix: str, version: str = "v1", **kw: Any) -> ForecastCache:
    return ForecastCache(client, prefix, model_version=version, horizon=1, ttl_seconds=600, **kw)


def _reference_digest(values: npt.NDArray[Any], horizon: int) -> str:
    """The definition, written out: blake2b-128 of the little-endian float64 values + horizon."""
    data = np.asarray(values, dtype="<f8").tobytes() + struct.pack("<q", horizon)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def test_digest_is_over_the_exact_window_bytes_and_horizon() -> None:
    d = digest(WINDOW_A, 1)
    assert d == _reference_digest(WINDOW_A, 1)
    assert digest(WINDOW_A, 2) != d
    nudged = WINDOW_A.copy()
    nudged[0] = np.nextafter(nudged[0], np.inf)
    assert digest(nudged, 1) != d


def test_digests_follow_the_definition_whatever_the_layout() -> None:
    big_endian = WINDOW_A.astype(">f8")
    strided = np.repeat(WINDOW_A, 2)[::2]
    as_float32 = (WINDOW_A + 0.5).astype(np.float32)
    windows = [WINDOW_A, big_endian, strided, as_float32, WINDOW_A + 1]
    assert digests(windows, 1) == [_reference_digest(w, 1) for w in windows]
    assert digests(windows[:3], 1) == [digest(WINDOW_A, 1)] * 3


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
    redis_client: redis.Redis, key_prefix: str, redis_commands_sent: list[str]
) -> None:
    cache = make(redis_client, key_prefix)
    items = [(digest(WINDOW_A + i, 1), OUT_A + i) for i in range(50)]
    cache.put_many(items[:1])  # the script is in Redis from here on
    sent = redis_commands_sent
    sent.clear()
    cache.put_many(items)
    assert sent == ["EVALSHA"]
    sent.clear()
    got = cache.get_many([d for d, _ in items])
    assert sent == ["MGET"]
    assert all(
        g is not None and g.tobytes() == o.tobytes() for g, (_, o) in zip(got, items, strict=True)
    )


def test_a_script_redis_forgot_is_loaded_again(redis_client: redis.Redis, key_prefix: str) -> None:
    cache = make(redis_client, key_prefix)
    d = digest(WINDOW_A, 1)
    cache.put_many([(d, OUT_A)])
    redis_client.script_flush()  # as after a restart
    cache.put_many([(d, OUT_B)])
    [got] = cache.get_many([d])
    assert got is not None and got.tobytes() == OUT_B.tobytes()


def test_empty_calls_cost_nothing(
    redis_client: redis.Redis, key_prefix: str, redis_commands_sent: list[str]
) -> None:
    cache = make(redis_client, key_prefix)
    assert cache.get_many([]) == []
    cache.put_many([])
    assert redis_commands_sent == []


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

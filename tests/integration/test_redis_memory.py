"""Redis memory is a budget (issue 15, item 12): a soak at a fixed rate against a Redis started with
a `maxmemory` and the eviction policy the README gives, the window store and the cache used as the
service uses them (windows trimmed after each commit, results cached with a short TTL)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from stream.cache import ForecastCache, digests
from stream.contracts import Tick
from stream.windows import WindowStore
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.integration

SYMBOLS = 20  # few, so that each key would grow without the trim (2,400 ticks each)
RATE = 4_000  # ticks/s, each one a forecast once its window is full
BATCH = 200
SECONDS = 12
TTL = 2


def test_memory_stays_flat_at_a_fixed_rate_under_a_maxmemory(tmp_path: Path) -> None:
    server = RedisProcess(
        tmp_path, "--maxmemory", "24mb", "--maxmemory-policy", "volatile-ttl"
    ).start()
    client = redis.Redis.from_url(server.url)
    try:
        store = WindowStore(client, "tc", size=60, history=3072, source_topic="ticks")
        cache = ForecastCache(client, "tc", "v1", horizon=1, ttl_seconds=TTL)
        used: list[int] = []
        offset = 0
        started = time.monotonic()
        next_sample = started + 1
        rng = np.random.default_rng(1)
        while time.monotonic() - started < SECONDS:
            ticks = [
                Tick(f"S{(offset + i) % SYMBOLS}", 100 + rng.random(), offset + i, 0, offset + i)
                for i in range(BATCH)
            ]
            batch = store.append_batch(ticks)
            keys = digests([w.prices for w in batch.windows], 1)
            cache.put_many([(d, np.ones(3)) for d in keys])
            store.trim({0: offset})  # the batch before this one is committed
            offset += BATCH
            time.sleep(max(0.0, started + offset / RATE - time.monotonic()))
            if time.monotonic() >= next_sample:
                used.append(int(client.info("memory")["used_memory"]))
                next_sample += 1
        info = client.info()
        assert info["rejected_connections"] == 0
        assert offset >= RATE * SECONDS * 0.9, "the soak did not keep its rate"
        # Steady once the first results expire: the last seconds hold no more than the first.
        steady, last = used[TTL + 2 : TTL + 5], used[-3:]
        assert max(last) <= max(steady) * 1.05 + 128 * 1024, used
        # Windows: 20 keys of 64 + 32 x (60 + 64) bytes; results: RATE x TTL x ~190 bytes.
        assert max(used) - used[0] < SYMBOLS * 6_000 + RATE * TTL * 400, used
    finally:
        client.close()
        server.kill()

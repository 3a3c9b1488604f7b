"""Live scores over the real window store and cache (Redis): the same on redelivery, after a
restart, after a commit trimmed the windows and after the cached outputs expired."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from stream.cache import ForecastCache
from stream.contracts import Record, Score, encode_tick
from stream.pipeline import Pipeline
from stream.windows import WindowStore
from tests.integration.test_pipeline_redis import DriftModel

pytestmark = pytest.mark.integration


def messages(n: int) -> list[Record]:
    rng = np.random.default_rng(11)
    out = []
    for offset in range(n):
        symbol = ("XAUUSD", "XAGUSD", "EURUSD")[offset % 3]
        value = encode_tick(symbol, float(1900 + rng.normal()), 1_714_559_400_000 + offset * 1000)
        out.append(Record("ticks", 0, offset, symbol.encode(), value))
    return out


def test_scores_are_the_same_on_redelivery_restart_trim_and_expiry(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    model = DriftModel()
    store = WindowStore(redis_client, key_prefix, size=60, history=300, source_topic="ticks")
    cache = ForecastCache(redis_client, key_prefix, model.version, 1, ttl_seconds=60)

    def pipeline() -> Pipeline:  # a new one is a restarted process: nothing in memory
        return Pipeline(store, cache, model, source_topic="ticks", clock_ms=lambda: 1)

    feed = messages(600)
    first: list[Score] = []
    forecasts = {}
    p = pipeline()
    for start in range(0, 600, 100):
        result = p.process(feed[start : start + 100], 65_536)
        first += result.scores
        forecasts.update({(f.symbol, f.source.offset): f for f in result.forecasts})
    # each symbol's first window (offsets 177..179) has no window before it
    assert len(first) == len(forecasts) - 3
    for s in first:
        before = forecasts[(s.symbol, s.source.offset - 3)]  # three symbols in turn
        assert (s.window_hash, s.price, s.lower, s.upper) == (
            before.window_hash,
            before.price,
            before.lower,
            before.upper,
        )
    rows = model.rows
    assert rows == len(forecasts)  # the windows before came from memory, never the model

    # a crash: the last two batches come again to a restarted process
    again = [
        s
        for start in (400, 500)
        for s in pipeline().process(feed[start : start + 100], 65_536).scores
    ]
    assert again == [s for s in first if s.source.offset >= 400]
    assert model.rows == rows  # all from the cache

    # committed up to 450, the keys trimmed; the cached outputs expired: computed again, same bits
    store.trim({0: 450})
    for key in redis_client.scan_iter(match=f"{key_prefix}:fc:*"):
        redis_client.delete(key)
    late = pipeline().process(feed[450:600], 65_536).scores
    assert late == [s for s in first if s.source.offset >= 450]

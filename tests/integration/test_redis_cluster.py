"""The window store, the cache and the key clean-up on a real three-node Redis Cluster.

The store on one Redis is the reference: the same ticks, redeliveries and late ticks must give
the same windows, outcomes and counts on the cluster, with one script call per node.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from stream.cache import ForecastCache
from stream.contracts import Tick
from stream.errors import StateLost, StoreUnavailable
from stream.redisio import Commands
from stream.service import delete_keys
from stream.windows import WindowBatch, WindowStore
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.integration

SYMBOLS = [f"S{i}" for i in range(12)]


@pytest.fixture
def cluster_client(redis_cluster_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_cluster_url)
    yield client
    client.close()


@pytest.fixture
def cluster_prefix(redis_cluster_url: str) -> Iterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_cluster_url)
    delete_keys(client, prefix)
    client.close()


def _nodes_holding(cluster_url: str, keys: list[str]) -> set[str]:
    raw = RedisCluster.from_url(cluster_url)
    try:
        return {raw.get_node_from_key(k).name for k in keys}
    finally:
        raw.close()


def _timeline(seed: int) -> list[list[Tick]]:
    """Batches over SYMBOLS and two partitions: appends, late and duplicate ticks, and whole
    batches sent again (a redelivery after a crash)."""
    rng = random.Random(seed)
    offsets = [0, 0]
    last_ts = dict.fromkeys(SYMBOLS, 0)
    batches: list[list[Tick]] = []
    for _ in range(40):
        if batches and rng.random() < 0.15:
            batches.append(list(rng.choice(batches[-3:])))
            continue
        batch = []
        for _ in range(rng.randint(1, 30)):
            symbol = rng.choice(SYMBOLS)
            partition = SYMBOLS.index(symbol) % 2
            kind = rng.random()
            if kind < 0.05:
                ts = last_ts[symbol] - 1  # late
            elif kind < 0.1:
                ts = last_ts[symbol]  # duplicate
            else:
                ts = last_ts[symbol] = last_ts[symbol] + rng.randint(1, 5)
            price = 100.0 + rng.random()
            batch.append(Tick(symbol, price, ts, partition, offsets[partition]))
            offsets[partition] += 1
        batches.append(batch)
    return batches


def _view(batch: WindowBatch) -> tuple[object, ...]:
    windows = [
        (w.tick.symbol, w.tick.offset, w.replayed, w.prices.tobytes()) for w in batch.windows
    ]
    rejected = [(t.symbol, t.offset, reason) for t, reason in batch.rejected]
    return windows, rejected, batch.counts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cluster_store_gives_what_one_redis_gives(
    seed: int,
    cluster_client: redis.Redis,
    cluster_prefix: str,
    redis_client: redis.Redis,
    key_prefix: str,
    redis_cluster_url: str,
) -> None:
    single = WindowStore(redis_client, key_prefix, size=5, history=40, source_topic="ticks")
    cluster = WindowStore(cluster_client, cluster_prefix, size=5, history=40, source_topic="ticks")
    for batch in _timeline(seed):
        assert _view(cluster.append_batch(batch)) == _view(single.append_batch(batch))
    assert len(_nodes_holding(redis_cluster_url, [cluster.window_key(s) for s in SYMBOLS])) == 3


def test_one_script_call_per_node(
    cluster_client: redis.Redis, cluster_prefix: str, redis_commands_sent: list[str]
) -> None:
    store = WindowStore(cluster_client, cluster_prefix, size=3, history=4, source_topic="ticks")
    store.append_batch([Tick(s, 100.0, 1, 0, i) for i, s in enumerate(SYMBOLS)])  # warm-up
    redis_commands_sent.clear()
    batch = [Tick(s, 101.0, 2, 0, len(SYMBOLS) + i) for i, s in enumerate(SYMBOLS)]
    store.append_batch(batch)
    assert redis_commands_sent == ["EVALSHA"] * 3


def test_markers_are_the_lowest_over_nodes_and_lost_with_any_node(
    cluster_client: redis.Redis, cluster_prefix: str, redis_cluster_url: str
) -> None:
    store = WindowStore(cluster_client, cluster_prefix, size=3, history=4, source_topic="ticks")
    store.append_batch([Tick(s, 100.0, 1, 0, i) for i, s in enumerate(SYMBOLS)])
    # Only S0 in the next batch: the nodes without it are raised to its offset all the same.
    store.append_batch([Tick("S0", 101.0, 2, 0, 40)])
    assert store.markers([0, 1]) == {0: 40, 1: None}
    # One node loses its state: the partition must be rebuilt, whatever the others hold.
    node = _nodes_holding(redis_cluster_url, [store.window_key("S0")]).pop()
    host, port = node.rsplit(":", 1)
    lost = redis.Redis(host=host, port=int(port))
    lost.flushall()
    lost.close()
    assert store.markers([0]) == {0: None}


def _lose_node_state(cluster_url: str, node: str, prefix: str) -> None:
    """What a node restarted empty looks like to the store, without touching other tests' keys."""
    host, port = node.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port))
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    assert keys
    for key in keys:  # one slot per command on a cluster node
        client.delete(key)
    client.close()


@pytest.mark.parametrize("with_its_symbols", [True, False])
def test_a_node_that_lost_its_state_is_found_on_the_next_batch(
    with_its_symbols: bool,
    cluster_client: redis.Redis,
    cluster_prefix: str,
    redis_cluster_url: str,
) -> None:
    """Issue 15, item 13: per node. The batch after the loss finds it whether or not it has
    ticks of the symbols that node holds (the other nodes kept their markers)."""
    store = WindowStore(cluster_client, cluster_prefix, size=3, history=4, source_topic="ticks")
    store.append_batch([Tick(s, 100.0, 1, 0, i) for i, s in enumerate(SYMBOLS)])
    node = _nodes_holding(redis_cluster_url, [store.window_key("S0")]).pop()
    _lose_node_state(redis_cluster_url, node, cluster_prefix)
    on_node = [
        s for s in SYMBOLS if _nodes_holding(redis_cluster_url, [store.window_key(s)]) == {node}
    ]
    elsewhere = [s for s in SYMBOLS if s not in on_node]
    symbols = on_node if with_its_symbols else elsewhere
    with pytest.raises(StateLost) as lost:
        store.append_batch([Tick(s, 101.0, 2, 0, 100 + i) for i, s in enumerate(symbols)])
    assert lost.value.partitions == [0]
    assert store.markers([0]) == {0: None}


def test_a_recreated_topic_starts_afresh_on_every_node(
    cluster_client: redis.Redis, cluster_prefix: str
) -> None:
    store = WindowStore(cluster_client, cluster_prefix, size=3, history=4, source_topic="ticks")
    store.append_batch([Tick(s, 100.0, 1, 0, 100 + i) for i, s in enumerate(SYMBOLS)])
    assert store.recreated({0: 5}) == [0]
    store.start_afresh([0])
    assert store.markers([0]) == {0: None}
    b = store.append_batch([Tick(s, 101.0, 2, 0, i) for i, s in enumerate(SYMBOLS)])
    assert b.counts["processed"] == len(SYMBOLS) and b.counts["too_old"] == 0
    assert store.markers([0]) == {0: len(SYMBOLS) - 1}


def test_cache_round_trip_across_nodes(
    cluster_client: redis.Redis, cluster_prefix: str, redis_cluster_url: str
) -> None:
    cache = ForecastCache(cluster_client, cluster_prefix, "v1", horizon=1, ttl_seconds=600)
    rng = np.random.default_rng(7)
    items = [(uuid.uuid4().hex, rng.normal(size=3)) for _ in range(60)]
    cache.put_many(items)
    got = cache.get_many([d for d, _ in items] + ["missing"])
    assert [g.tobytes() for g in got[:-1] if g is not None] == [o.tobytes() for _, o in items]
    assert got[-1] is None
    assert len(_nodes_holding(redis_cluster_url, [cache.key(d) for d, _ in items])) == 3
    raw = RedisCluster.from_url(redis_cluster_url)
    assert 0 < raw.ttl(cache.key(items[0][0])) <= 600
    raw.close()


def test_delete_keys_reaches_every_node(
    cluster_client: redis.Redis, cluster_prefix: str, redis_cluster_url: str
) -> None:
    store = WindowStore(cluster_client, cluster_prefix, size=3, history=4, source_topic="ticks")
    store.append_batch([Tick(s, 100.0, 1, 0, i) for i, s in enumerate(SYMBOLS)])
    assert delete_keys(cluster_client, cluster_prefix) >= len(SYMBOLS)
    assert Commands(cluster_client).mget([store.window_key(s) for s in SYMBOLS]) == [None] * 12


def test_a_moved_slot_is_read_again_and_the_call_retried(
    cluster_client: redis.Redis, cluster_prefix: str
) -> None:
    """As after a resharding: the map says the wrong node, which answers MOVED. The call fails as
    a ConnectionError (the runner retries a batch on it) and the next one goes to the right node."""
    commands = Commands(cluster_client)
    key = f"{cluster_prefix}:k{{S0}}"
    right = commands.node_of(key)
    wrong = next(n for n in commands.nodes() if n != right)
    slot = key_slot(key.encode())
    commands._slots[slot] = wrong  # stale
    with pytest.raises(redis.exceptions.ConnectionError, match="MOVED"):
        commands.mget([key])
    assert commands.node_of(key) == right
    assert commands.mget([key]) == [None]


def _cluster_state(client: redis.Redis) -> bytes:
    info = client.execute_command("CLUSTER", "INFO")
    assert isinstance(info, bytes)
    return info.split(b"cluster_state:")[1].split(b"\r")[0]


def _wait_state(client: redis.Redis, state: bytes) -> None:
    deadline = time.monotonic() + 10
    while _cluster_state(client) != state:
        assert time.monotonic() < deadline, f"cluster_state never became {state!r}"
        time.sleep(0.02)


def test_a_cluster_that_is_down_is_store_unavailable_then_serves_again(tmp_path: Path) -> None:
    """Issue 15, item 13: a node that is not serving answers a script's commands with `ERR Script
    attempted to execute a command while the cluster is down` (not CLUSTERDOWN). Made here with a
    one-node cluster that drops a slot (full coverage is required, so the cluster is down)."""
    server = RedisProcess(
        tmp_path, "--cluster-enabled", "yes", "--cluster-announce-ip", "127.0.0.1"
    ).start()
    client = redis.Redis.from_url(server.url)
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        _wait_state(client, b"ok")
        store = WindowStore(client, "tc", size=3, history=4, source_topic="ticks")
        cache = ForecastCache(client, "tc", "v1", horizon=1, ttl_seconds=60)
        store.append_batch([Tick("S0", 100.0, 1, 0, 0)])
        spare = key_slot(b"{spare}")
        client.execute_command("CLUSTER", "DELSLOTS", spare)
        _wait_state(client, b"fail")
        with pytest.raises(StoreUnavailable, match="cluster is down"):
            store.append_batch([Tick("S0", 101.0, 2, 0, 1)])
        with pytest.raises(StoreUnavailable, match="cluster is down"):
            cache.put_many([("d", np.ones(3))])
        client.execute_command("CLUSTER", "ADDSLOTS", spare)
        _wait_state(client, b"ok")
        assert store.append_batch([Tick("S0", 101.0, 2, 0, 1)]).counts["processed"] == 1
    finally:
        client.close()
        server.kill()

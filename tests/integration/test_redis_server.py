"""Redis round trips the window store and cache rely on: a registered Lua script, pipelines."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

APPEND_AND_LEN = """
-- KEYS[1]: a list; ARGV: values to append. Returns the new length.
for i = 1, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
return redis.call('LLEN', KEYS[1])
"""


def test_registered_lua_script_runs_atomically(redis_client, key_prefix: str) -> None:
    script = redis_client.register_script(APPEND_AND_LEN)
    key = f"{key_prefix}:{{sym}}:list"
    assert script(keys=[key], args=[b"a", b"b"]) == 2
    assert script(keys=[key], args=[b"c"]) == 3
    assert redis_client.lrange(key, 0, -1) == [b"a", b"b", b"c"]


def test_pipeline_round_trip_with_binary_values(redis_client, key_prefix: str) -> None:
    values = {f"{key_prefix}:k{i}": bytes([i, 0, 255]) for i in range(10)}
    pipe = redis_client.pipeline(transaction=False)
    for k, v in values.items():
        pipe.set(k, v, ex=60)
    pipe.execute()
    assert redis_client.mget(list(values)) == list(values.values())
    assert 0 < redis_client.ttl(next(iter(values))) <= 60

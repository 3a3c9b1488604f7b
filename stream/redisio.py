"""The per-batch Redis commands, sent without redis-py's per-command machinery.

A batch costs two or three Redis commands (the window script, the cache fill, sometimes a lookup).
Through `Redis.execute_command` or a registered `Script`, each paid ~85 us here on top of the round
trip (pool checkout under a lock with its observability hooks, the retry wrapper): as much as the
round trip itself, and at a light load, where a batch is a tick or two, a tenth of tick-to-forecast.
`Commands` keeps one connection per thread (the loop's and the model thread's) and sends on it
directly. Failures are redis-py's own exceptions, so callers map them as before.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.exceptions

Arg = str | bytes | int | float


class Commands:
    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        # The pool's own connection class and settings (TLS, password, timeouts, database).
        self._connect: Callable[[], Any] = lambda: pool.connection_class(**pool.connection_kwargs)
        self._local = threading.local()
        self._scripts: dict[str, str] = {}

    def script(self, source: str) -> str:
        """Remember a Lua script; returns the SHA1 that `evalsha` takes (Redis names it so)."""
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        self._scripts[sha] = source
        return sha

    def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return self._call("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # A restarted or flushed Redis has forgotten the script: load it, once, and retry.
            self._call("SCRIPT", "LOAD", self._scripts[sha])
            return self._call("EVALSHA", sha, len(keys), *keys, *args)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        result: list[bytes | None] = self._call("MGET", *keys)
        return result

    def _call(self, *args: Arg) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        try:
            connection.send_command(*args)
            return connection.read_response()
        except redis.exceptions.ResponseError:
            raise  # a whole error reply: the connection is still in step
        except BaseException:
            # Timed out or cut off mid-reply: the next command must not read this one's answer.
            connection.disconnect()
            raise

"""The per-batch Redis commands, sent without redis-py's per-command machinery; on one Redis or
on a Redis Cluster.

A batch costs two or three Redis commands (the window script, the cache fill, sometimes a lookup).
Through `Redis.execute_command` or a registered `Script`, each paid ~85 us here on top of the round
trip (pool checkout under a lock with its observability hooks, the retry wrapper): as much as the
round trip itself, and at a light load, where a batch is a tick or two, a tenth of tick-to-forecast.
`Commands` keeps one connection per thread (the loop's and the model thread's) and node, and sends
on it directly. Failures are redis-py's own exceptions, so callers map them as before.

On a cluster (found by asking the server, no setting), the callers split a batch by node
(`group`) and make one script call per node. Redis refuses declared keys of different hash slots
in one command (CROSSSLOT), so cluster scripts take no declared keys: their keys come in ARGV and
the script is flagged `allow-cross-slot-keys` (Redis >= 7), which lets it use any key its node
owns; a header puts KEYS and ARGV back as the script expects them. A node that no longer owns a key answers MOVED or ASK: the slot map is read again and the
call fails as a ConnectionError, which the runner retries like any Redis outage (so a batch that
touches a slot being migrated waits until the migration is done).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import Any

import redis
import redis.exceptions
from redis.crc import key_slot

Arg = str | bytes | int | float

#: Answers of a cluster node that mean "not here (now)": MOVED, ASK, TRYAGAIN, CLUSTERDOWN,
#: MASTERDOWN.
_TOPOLOGY = (
    redis.exceptions.AskError,  # MovedError is one
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # MasterDownError is one
)

#: The same answers as plain errors, from a command a script runs: a node that has just restarted
#: and not yet rejoined (or has lost a slot) answers EVALSHA with `ERR Script attempted to execute
#: a command while the cluster is down` for a second or two, and a key its node no longer owns with
#: `ERR Script attempted to access a non local key in a cluster node`. Matched on the words, as
#: redis-py has no class for them.
_TOPOLOGY_WORDS = ("cluster is down", "non local key", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN")

#: The node of a single Redis.
SINGLE = ""

#: What a script runs under on a cluster: flagged to use keys of several slots of its node, and
#: KEYS and ARGV rebuilt from ARGV = (number of keys, keys..., args...), as `evalsha` sends them,
#: so the scripts themselves read KEYS and ARGV as on one Redis.
CLUSTER_SCRIPT_HEADER = (files("stream") / "redisio_cluster_header.lua").read_text(encoding="utf-8")


class Commands:
    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # The pool's own connection class and settings (TLS, password, timeouts, database).
        self._connect: Callable[[str], Any] = lambda node: pool.connection_class(
            **(kwargs if node == SINGLE else {**kwargs, **_address(node)})
        )
        self._local = threading.local()
        #: script handle (SHA1 of its plain source) -> (source, SHA1 as sent)
        self._scripts: dict[str, tuple[str, str]] = {}
        self._lock = threading.RLock()
        self._cluster: bool | None = None  # asked of the server at first use
        #: slot -> "host:port" of its primary, on a cluster
        self._slots: list[str] = []
        self._tags: dict[str, str] = {}  # node -> a hash tag it owns (see local_tag)

    @property
    def cluster(self) -> bool:
        if self._cluster is None:
            info = self._call("INFO", "cluster")
            text = info.decode() if isinstance(info, bytes) else str(info)
            cluster = "cluster_enabled:1" in text
            if cluster:
                self._read_slot_map()
            self._cluster = cluster
        return self._cluster

    # ------------------------------------------------------------ routing

    def node_of(self, key: str) -> str:
        return self._slots[key_slot(key.encode())] if self.cluster else SINGLE

    def group(self, keys: Sequence[str]) -> dict[str, list[int]]:
        """Indexes of `keys` by the node that holds them (one group, SINGLE, on one Redis)."""
        if not self.cluster:
            return {SINGLE: list(range(len(keys)))}
        out: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            out.setdefault(self.node_of(key), []).append(i)
        return out

    def nodes(self) -> list[str]:
        """Every primary (just SINGLE on one Redis)."""
        return sorted(set(self._slots) - {SINGLE}) if self.cluster else [SINGLE]

    def local_tag(self, node: str) -> str:
        """A hash tag whose slot `node` owns: for keys that must live beside a node's windows."""
        if not self.cluster:
            return ""
        tag = self._tags.get(node)
        if tag is None:
            # {n0}..{n145593} cover every slot; a node that owns none left the map meanwhile.
            for i in range(145_594):
                if self.node_of(f"{{n{i}}}") == node:
                    tag = self._tags[node] = f"{{n{i}}}"
                    return tag
            raise redis.exceptions.ConnectionError(f"redis cluster changed: {node} owns no slot")
        return tag

    # ------------------------------------------------------------ commands

    def script(self, source: str) -> str:
        """Remember a Lua script; returns the handle `evalsha` takes. On a cluster the script is
        sent flagged to use keys of several slots of its node."""
        handle = _sha1(source)
        self._scripts[handle] = (source, "")
        return handle

    def evalsha(
        self, handle: str, keys: Sequence[str], args: Sequence[Arg], node: str = SINGLE
    ) -> Any:
        """Run a script. On a cluster its keys go in ARGV (none declared; see
        CLUSTER_SCRIPT_HEADER) and the call goes to `node`, which must hold them all."""
        source, sha = self._scripts[handle]
        if not sha:
            if self.cluster:
                source = CLUSTER_SCRIPT_HEADER + source
            sha = _sha1(source)
            self._scripts[handle] = (source, sha)
        command: tuple[Arg, ...] = (
            ("EVALSHA", sha, 0, len(keys), *keys, *args)
            if self.cluster
            else ("EVALSHA", sha, len(keys), *keys, *args)
        )
        try:
            return self._call(*command, node=node)
        except redis.exceptions.NoScriptError:
            # A restarted or flushed Redis has forgotten the script: load it, once, and retry.
            self._call("SCRIPT", "LOAD", source, node=node)
            return self._call(*command, node=node)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys`: one MGET on one Redis; on a cluster, where MGET refuses keys of
        several slots, pipelined GETs in one send per node."""
        if not self.cluster:
            result: list[bytes | None] = self._call("MGET", *keys)
            return result
        out: list[bytes | None] = [None] * len(keys)
        for node, indexes in self.group(keys).items():
            values = self._pipeline([("GET", keys[i]) for i in indexes], node)
            for i, value in zip(indexes, values, strict=True):
                out[i] = value
        return out

    def delete_matching(self, pattern: str) -> int:
        """Delete every key matching `pattern` on every node (SCAN, then UNLINK per key: one
        command may not name keys of several slots on a cluster)."""
        deleted = 0
        for node in self.nodes():
            cursor: Any = b"0"
            while True:
                cursor, keys = self._call(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, node=node
                )
                if keys:
                    deleted += sum(self._pipeline([("UNLINK", k) for k in keys], node))
                if int(cursor) == 0:
                    break
        return deleted

    def _pipeline(self, commands: list[tuple[Arg, ...]], node: str) -> list[Any]:
        connection = self._connection(node)
        replies: list[Any] = []
        error: redis.exceptions.ResponseError | None = None
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as exc:  # read the rest: stay in step
                    error = error or exc
                    replies.append(None)
        except BaseException:
            connection.disconnect()
            raise
        if error is not None:
            self._moved(error)
            raise error
        return replies

    def _connection(self, node: str) -> Any:
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
        connection = connections.get(node)
        if connection is None:
            connection = connections[node] = self._connect(node)
        return connection

    def _call(self, *args: Arg, node: str = SINGLE) -> Any:
        connection = self._connection(node)
        try:
            connection.send_command(*args)
            return connection.read_response()
        except redis.exceptions.ResponseError as exc:
            self._moved(exc)
            raise  # a whole error reply: the connection is still in step
        except BaseException:
            # Timed out or cut off mid-reply: the next command must not read this one's answer.
            connection.disconnect()
            raise

    # ------------------------------------------------------------ cluster topology

    def _moved(self, exc: redis.exceptions.ResponseError) -> None:
        """A slot moved (resharding, failover) or the cluster is not serving (a node restarting):
        read the map again; the batch is retried (a ConnectionError, so StoreUnavailable)."""
        if not self._cluster:
            return
        if isinstance(exc, _TOPOLOGY):
            what = type(exc).__name__.removesuffix("Error").upper()
        elif any(words in str(exc) for words in _TOPOLOGY_WORDS):
            what = "not serving:"
        else:
            return
        try:
            self._read_slot_map()
        except redis.exceptions.ConnectionError as unread:
            # The node that answered may be the only one up; the retry reads the map again.
            raise redis.exceptions.ConnectionError(
                f"redis cluster changed: {what} {exc} (map not read: {unread})"
            ) from exc
        raise redis.exceptions.ConnectionError(f"redis cluster changed: {what} {exc}") from exc

    def _read_slot_map(self) -> None:
        with self._lock:
            seeds = [SINGLE, *sorted(set(self._slots) - {SINGLE})]
            last: Exception | None = None
            for seed in seeds:
                try:
                    reply = self._call("CLUSTER", "SLOTS", node=seed)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    last = exc
                    continue
                slots = [""] * 16384
                for first, end, primary, *_replicas in reply:
                    host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                    for slot in range(int(first), int(end) + 1):
                        slots[slot] = f"{host}:{int(primary[1])}"
                self._slots = slots
                self._tags = {}
                return
            raise redis.exceptions.ConnectionError(f"no cluster node answered: {last}")


def _sha1(source: str) -> str:
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def _address(node: str) -> dict[str, Any]:
    host, port = node.rsplit(":", 1)
    return {"host": host, "port": int(port)}

"""The forecast result cache: model outputs keyed by the exact window bytes, in Redis.

Key `{prefix}:fc:{model_version}:{digest}`, value the raw float64 bytes of the model's outputs for
that window, so a cached forecast is bit-identical to a computed one. The model version in the key
means a new model never serves an old model's answers. One round trip per batch for lookups
(MGET) and one for fills (one script call); on a Redis Cluster, one of each per node.

Entries live `cache.ttl_seconds` (120 s by default): the stream looks a result up only for a
replayed window, and a redelivery comes from the uncommitted span (committed every 0.1 s), replayed
after a crash or a rebalance within a restart's time. Longer costs memory in proportion to the
rate: ~190 bytes per entry, so rate x TTL x 190 bytes (30,000 forecasts/s for 120 s: ~690 MB). A
result no longer cached is recomputed bit for bit the same, so the TTL trades CPU for memory, never
correctness. Every entry has a TTL and the windows have none, so Redis runs with
`maxmemory-policy volatile-ttl`: under pressure it drops cached results, soonest to expire first,
never a window.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from importlib.resources import files

import numpy as np
import numpy.typing as npt
import redis
import redis.exceptions

from stream.errors import StoreUnavailable
from stream.redisio import Commands

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,  # maxmemory reached with no cached result left to evict
)

_F64 = np.dtype("<f8")

#: Stores a batch of outputs with one TTL in one command (KEYS and ARGV documented in the file).
FILL_SCRIPT = (files("stream") / "cache_fill.lua").read_text(encoding="utf-8")


def digest(prices: npt.NDArray[np.float64], horizon: int) -> str:
    """blake2b-128 of the window's float64 bytes and the horizon, as 32 hex chars.

    This is also the forecast's `window_hash`. The bytes hashed are little-endian float64 whatever
    the array's dtype or layout, so equal windows always hash equal.
    """
    return digests([prices], horizon)[0]


def digests(windows: Sequence[npt.NDArray[np.float64]], horizon: int) -> list[str]:
    """`digest` of each window, hashing the arrays' memory in place where it is already
    contiguous little-endian float64 (every window the store hands out): no copy per window.
    Other layouts and dtypes are converted first, so equal values always hash equal."""
    suffix = struct.pack("<q", horizon)
    blake2b = hashlib.blake2b
    out: list[str] = []
    append = out.append
    for prices in windows:
        # `is not`: numpy's dtype `!=` costs more than the hash's set-up; a dtype equal to
        # float64 but another object only takes the conversion, a no-op that hashes the same
        if prices.dtype is not _F64 or not prices.flags.c_contiguous:
            prices = np.ascontiguousarray(prices, dtype=_F64)
        # the array's own buffer, without a memoryview object (numpy's stubs do not say Buffer)
        h = blake2b(prices, digest_size=16)  # type: ignore[arg-type]
        h.update(suffix)
        append(h.hexdigest())
    return out


class ForecastCache:
    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        model_version: str,
        horizon: int,
        ttl_seconds: int,
        enabled: bool = True,
    ) -> None:
        if ttl_seconds < 1:
            raise ValueError("ttl_seconds must be >= 1")
        self._prefix = key_prefix
        self.model_version = model_version
        self.horizon = horizon
        self.ttl_seconds = ttl_seconds
        self.enabled = enabled
        self._redis = Commands(client)
        self._fill = self._redis.script(FILL_SCRIPT)

    def key(self, window_digest: str, model_version: str | None = None) -> str:
        return f"{self._prefix}:fc:{model_version or self.model_version}:{window_digest}"

    def get_many(
        self, digests: Sequence[str], model_version: str | None = None
    ) -> list[npt.NDArray[np.float64] | None]:
        """Cached outputs per digest (None on a miss), in one MGET.

        `model_version` defaults to the cache's; the pipeline passes the version of the model
        that serves the batch, which a hot reload may change while a batch is in the model.
        """
        if not self.enabled or not digests:
            return [None] * len(digests)
        try:
            values = self._redis.mget([self.key(d, model_version) for d in digests])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: cache lookup failed: {exc}") from exc
        out: list[npt.NDArray[np.float64] | None] = []
        for v in values:
            # A value that is not whole float64s is not ours: a miss, and the fill overwrites it.
            if v is None or len(v) == 0 or len(v) % 8:
                out.append(None)
            else:
                out.append(np.frombuffer(v, dtype=_F64))
        return out

    def put_many(
        self, items: Sequence[tuple[str, npt.NDArray[np.float64]]], model_version: str | None = None
    ) -> None:
        """Store outputs per digest with the TTL, in one script call (one command, one reply)."""
        if not self.enabled or not items:
            return
        keys = [self.key(d, model_version) for d, _ in items]
        values = [np.ascontiguousarray(o, dtype=_F64).tobytes() for _, o in items]
        try:
            for node, indexes in self._redis.group(keys).items():  # one node on one Redis
                node_keys = [keys[i] for i in indexes]
                node_values = [values[i] for i in indexes]
                self._redis.evalsha(self._fill, node_keys, [self.ttl_seconds, *node_values], node)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: cache fill failed: {exc}") from exc

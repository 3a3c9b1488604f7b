"""The latest full window of a symbol, read from the stream's window store in Redis.

Why this is the latest published forecast: the stream publishes a forecast for every full window
it appends, computed from exactly these prices, and caches the model's outputs for it before the
forecast is produced. So the window the store holds now, run through the same digest, cache and
model (stream/serve/forecaster.py), is that forecast bit for bit: its outputs come from the cache,
or are recomputed to the same bits after the cache entry expired (the model is batch-invariant).
Only `cached` and `produced_at` may differ, as between any two copies of one forecast
(DESIGN.md, Wire contracts). It costs one GET and needs nothing new from the stream: no extra
key to write per tick, no Kafka consumer in the API (reading the output topic would mean
replaying it on every start, or a seek-and-scan per request).

The forecast is the API model's: the same as the stream's when both serve the same artifact,
which is how they are deployed (one `model.path`). A window whose last tick the stream has
appended but whose forecast it has not yet delivered (a few ms, or until a crashed consumer's
successor republishes it) is answered too: the forecast that will be published, identical.

The key's layout is the store's (stream/windows.py, "Layout"): a header of float64s (layout
version, capacity C, count of entries ever appended, lineage start, last ts, last offset, last
lineage, first held seq), then C prices and C entries of (offset, ts, lineage) as float64s, in a
ring (slot = seq mod C). The latest-forecast tests of tests/serve/test_api.py hold this reader
to windows the real WindowStore appended, so a change of the layout fails there.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt
import redis.exceptions

from stream.contracts import Source
from stream.errors import StoreUnavailable
from stream.redisio import Commands

#: lineage = partition + LINEAGE x epoch (windows_append_batch.lua)
LINEAGE = 2**24

_HEADERS = {2: (64, 8), 1: (56, 7)}  # layout -> (header bytes, float64 fields)

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


class LatestWindow:
    """A symbol's last W prices and the tick that completed them."""

    __slots__ = ("prices", "source", "ts")

    def __init__(self, prices: npt.NDArray[np.float64], ts: int, source: Source) -> None:
        self.prices = prices
        self.ts = ts
        self.source = source


def parse_window(data: bytes, size: int, topic: str) -> LatestWindow | None:
    """The newest full window in a window key's value; None if it holds fewer than `size`
    prices. Raises ValueError for bytes that are not a window of a known layout."""
    if len(data) < 56:
        raise ValueError(f"{len(data)} bytes: not a window")
    layout = int(struct.unpack_from("<d", data)[0])
    if layout not in _HEADERS:
        raise ValueError(f"unknown window layout {layout}")
    header_bytes, fields = _HEADERS[layout]
    header = struct.unpack_from(f"<{fields}d", data)
    capacity, count = int(header[1]), int(header[2])
    first = int(header[7]) if layout == 2 else 0
    if capacity <= 0 or len(data) < header_bytes + 32 * capacity:
        raise ValueError(f"window of capacity {capacity} in {len(data)} bytes")
    if count < size:
        return None
    oldest = max(first, count - capacity)
    if count - oldest < size:
        raise ValueError(f"window holds {count - oldest} prices, fewer than {size}")
    ring = np.frombuffer(data, dtype="<f8", count=capacity, offset=header_bytes)
    slots = np.arange(count - size, count) % capacity
    prices = np.ascontiguousarray(ring[slots], dtype=np.float64)
    last = (count - 1) % capacity
    offset, ts, lineage = struct.unpack_from("<3d", data, header_bytes + 8 * capacity + 24 * last)
    return LatestWindow(prices, int(ts), Source(topic, int(lineage) % LINEAGE, int(offset)))


class LatestWindows:
    """Reads symbols' latest windows from the store (one GET per symbol)."""

    def __init__(self, commands: Commands, key_prefix: str, size: int, topic: str) -> None:
        self._redis = commands
        self._prefix = key_prefix
        self.size = size
        self.topic = topic

    def key(self, symbol: str) -> str:
        # WindowStore.window_key: the braces are the Redis Cluster hash tag
        return f"{self._prefix}:win:{{{symbol}}}"

    def get(self, symbol: str) -> LatestWindow | None:
        try:
            (data,) = self._redis.mget([self.key(symbol)])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: window read failed: {exc}") from exc
        if data is None:
            return None
        return parse_window(data, self.size, self.topic)

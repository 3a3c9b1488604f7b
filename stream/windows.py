"""Rolling price windows in Redis, idempotent under redelivery: one atomic Lua call per batch.

Layout: one string per symbol, `{prefix}:win:{SYMBOL}` (the braces are a Redis Cluster hash tag),
a fixed-capacity ring of C = W + R entries, in regions so that a window is one or two contiguous
byte ranges and an append copies the tick's bytes as they came:

    [0, 56)              header: 7 little-endian float64: layout version (1), capacity C,
                         count (entries ever appended), lineage start (seq of the first entry of
                         the current partition), last ts, last offset, last partition
    [56, 56 + 8C)        prices (float64, slot = seq mod C): a window is a contiguous range
    then 24C bytes       per slot: source offset, event ts, source partition (float64 each),
                         the tick's own bytes from the script's input

Every number is a float64 because Redis Lua numbers are doubles; event times are limited to
+-2**53 at decode for the same reason, offsets and partitions never get near it. The capacity is
fixed when a key is created: a changed `window.history` applies to new symbols only.

Per tick, the script decides (same partition as the last applied entry, unless noted):
- first tick of a symbol, or offset above the last applied one: appended if its ts is above the
  last ts, else `late` (older) or `duplicate` (same ts), state unchanged;
- another partition than the last entry's (the topic was repartitioned): a new lineage, judged by
  ts alone as above;
- offset at or below the last applied one: a redelivery. The entry with that offset is looked up
  (binary search over the offsets of the current lineage) and the window that ended there is
  returned (`replayed`). An offset not in the history was rejected the first time: the verdict is
  reproduced by comparing with the entry just before it. Beyond the history: `too_old`.

The per-partition marker `{prefix}:mark:{topic}:{partition}` holds the highest appended offset;
it is written in the same call, so windows and marker cannot disagree after a crash.

On a Redis Cluster a batch is one such call per node, each with the ticks of the symbols that node
holds, and each node keeps its own markers (under a hash tag the node owns). A node with no tick
of a partition in a batch gets that partition's marker raised to the batch's last offset there
(it had nothing to apply), so `markers` can take the lowest over the nodes, and a node that lost
its state (no marker) has the partition rebuilt.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import redis.exceptions
from numpy.lib.stride_tricks import sliding_window_view

from stream.contracts import Tick, Window
from stream.errors import ConfigError, StoreUnavailable
from stream.redisio import SINGLE, Commands

OUTCOMES = ("processed", "warming", "replayed", "late", "duplicate", "too_old")

# KEYS[1..n]      the window key of each distinct symbol of the batch
# KEYS[n+1..]     the marker key of each distinct partition of the batch
# ARGV[1]         W, the window size
# ARGV[2]         C, the ring capacity (W + R) for keys this call creates
# ARGV[3]         n, the number of window keys
# ARGV[4]         the ticks, 40 bytes each, little-endian: u32 window key index (1-based),
#                 u32 marker key index (1-based, counted from KEYS[n+1]), f64 price, f64 offset,
#                 f64 ts, f64 partition (this order lets the script copy entries byte for byte)
# Returns {outcomes, refs, blocks, tails}; the script builds no per-tick window string:
#   outcomes  one byte per tick: p appended and completes a window, w appended while warming up,
#             r replayed with a window, R replayed without one (it was warming), l late,
#             d duplicate, o too old;
#   refs      per r tick, in tick order, u32 block number (1-based) and u32 index of the window's
#             first price in that block;
#   blocks    runs of stored prices (float64) that hold the replayed windows: consecutive
#             redeliveries of a symbol share one block;
#   tails     per window key, the up to W-1 prices before its first append in this batch (the
#             caller completes the windows of appended ticks with their own prices).
# All reads that can fail (layout checks) come before the first write, and nothing after the first
# write can fail, so a batch is applied entirely or not at all.
_APPEND_BATCH_LUA = r"""
local W = tonumber(ARGV[1])
local NEWCAP = tonumber(ARGV[2])
local NKEYS = tonumber(ARGV[3])
local BLOB = ARGV[4]
local HDR = 56
local sunpack, sub, concat = struct.unpack, string.sub, table.concat

local states, blocks, refs = {}, {}, {}
for k = 1, NKEYS do
  local key = KEYS[k]
  local h = redis.call('GETRANGE', key, 0, HDR - 1)
  local st = {key = key, count = 0, lstart = 0, cap = NEWCAP,
              pprice = {}, pmeta = {}}
  if #h == HDR then
    local version
    version, st.cap, st.count, st.lstart, st.lts, st.loff, st.lpart = sunpack('<ddddddd', h)
    if version ~= 1 then
      return redis.error_reply('tickcast: ' .. key .. ' has unknown layout ' .. version)
    end
  elseif #h ~= 0 then
    return redis.error_reply('tickcast: ' .. key .. ' is not a window')
  end
  if st.cap < W then
    return redis.error_reply('tickcast: ' .. key .. ' holds ' .. st.cap ..
      ' entries, fewer than the window size ' .. W)
  end
  states[k] = st
end

-- n prices from seq `first` on, as stored in Redis
local function read_prices(st, first, n)
  if n <= 0 then return '' end
  local slot = first % st.cap
  local n1 = math.min(n, st.cap - slot)
  local s = redis.call('GETRANGE', st.key, HDR + slot * 8, HDR + (slot + n1) * 8 - 1)
  if n1 < n then
    s = s .. redis.call('GETRANGE', st.key, HDR, HDR + (n - n1) * 8 - 1)
  end
  return s
end

-- read the block of the symbol's open replay span (before anything overwrites its slots)
local function close_span(st)
  local sp = st.span
  if sp == nil then return end
  blocks[sp.id] = read_prices(st, sp.first, sp.last - sp.first + 1)
  st.span = nil
end

-- write the pending entries: a contiguous run of slots, split where the ring wraps
local function flush(st)
  local n = #st.pprice
  if n == 0 then return end
  close_span(st)
  local cap = st.cap
  local skip = math.max(0, n - cap) -- more appends than slots: the older ones are overwritten
  local slot = (st.pfirst + skip) % cap
  local n1 = math.min(n - skip, cap - slot)
  local regions = {{st.pprice, HDR, 8}, {st.pmeta, HDR + cap * 8, 24}}
  for _, r in ipairs(regions) do
    local t, base, width = r[1], r[2], r[3]
    redis.call('SETRANGE', st.key, base + slot * width, concat(t, '', skip + 1, skip + n1))
    if skip + n1 < n then
      redis.call('SETRANGE', st.key, base, concat(t, '', skip + n1 + 1, n))
    end
  end
  redis.call('SETRANGE', st.key, 0,
    struct.pack('<ddddddd', 1, cap, st.count, st.lstart, st.lts, st.loff, st.lpart))
  st.pprice, st.pmeta = {}, {}
  st.cfirst = nil
end

-- the source offset of entry `seq`, through a small cache of up to CHUNK entries around it:
-- a lookup probes near the newest entries first, then mostly asks for the next one
local CHUNK = 32
local function off_at(st, seq)
  local cf = st.cfirst
  if cf == nil or seq < cf or seq >= cf + st.clen then
    local slot = seq % st.cap
    local first = math.max(0, slot - CHUNK / 2)  -- slots, never across the end of the ring
    local n = math.min(st.cap, slot + CHUNK / 2) - first
    local base = HDR + st.cap * 8 + first * 24
    st.chunk = redis.call('GETRANGE', st.key, base, base + n * 24 - 1)
    cf = seq - (slot - first)
    st.cfirst, st.clen = cf, n
  end
  return (sunpack('<d', st.chunk, (seq - cf) * 24 + 1))
end

local function append(st, pos, ts, off, part)
  if st.tail == nil then -- first append of this symbol in the batch: Redis is current
    local have = math.min(st.count, W - 1)
    st.tail = read_prices(st, st.count - have, have)
  end
  local i = #st.pprice + 1
  if i == 1 then st.pfirst = st.count end
  st.pprice[i] = sub(BLOB, pos + 8, pos + 15)
  st.pmeta[i] = sub(BLOB, pos + 16, pos + 39)
  st.count = st.count + 1
  st.lts, st.loff, st.lpart = ts, off, part
  if st.count >= W then return 'p' end
  return 'w'
end

local function redelivered(st, ts, off)
  flush(st)
  local cap = st.cap
  local oldest = math.max(0, st.count - cap)
  local lo, hi = math.max(oldest, st.lstart), st.count - 1
  local j, found
  -- redeliveries come in offset order: try the entry after the last one found first
  if st.hint and st.hint + 1 >= lo and st.hint + 1 <= hi and off_at(st, st.hint + 1) == off then
    j, found = st.hint + 1, true
  else
    -- the last entry at or below `off` (offsets increase within a lineage): gallop back from
    -- the newest entry, since redeliveries are recent, then bisect
    local b, step = hi, 1
    while off_at(st, b) > off do
      if b == lo then return 'o' end
      hi = b - 1
      b = math.max(lo, b - step)
      step = step * 2
    end
    lo = b
    while lo < hi do
      local mid = math.floor((lo + hi + 1) / 2)
      if off_at(st, mid) <= off then lo = mid else hi = mid - 1 end
    end
    j = lo
    found = off_at(st, j) == off
  end
  if found then
    st.hint = j
    if j + 1 < W then return 'R' end
    local first = j - W + 1
    if first < oldest then return 'o' end
    local sp = st.span
    if sp == nil or first < sp.first then
      close_span(st)
      sp = {id = #blocks + 1, first = first, last = j}
      blocks[sp.id] = '' -- filled by close_span
      st.span = sp
    elseif j > sp.last then
      sp.last = j
    end
    refs[#refs + 1] = struct.pack('<I4I4', sp.id, first - sp.first)
    return 'r'
  end
  -- rejected the first time: the entry before it was the last one then
  local at = HDR + cap * 8 + (j % cap) * 24 + 8
  local tj = sunpack('<d', redis.call('GETRANGE', st.key, at, at + 7))
  if ts < tj then return 'l' elseif ts == tj then return 'd' end
  return 'o'
end

local outcomes, marks = {}, {}
local pos = 1
for i = 1, #BLOB / 40 do
  local ki, mi, off, ts, part = sunpack('<I4I4xxxxxxxxddd', BLOB, pos)
  local st = states[ki]
  local code
  if st.count > 0 and (part ~= st.lpart or off > st.loff) then
    if ts > st.lts then
      if part ~= st.lpart then st.lstart = st.count end
      code = append(st, pos, ts, off, part)
    elseif ts < st.lts then code = 'l' else code = 'd' end
  elseif st.count == 0 then
    code = append(st, pos, ts, off, part)
  else
    code = redelivered(st, ts, off)
  end
  if (code == 'p' or code == 'w') and (marks[mi] == nil or marks[mi] < off) then
    marks[mi] = off
  end
  outcomes[i] = code
  pos = pos + 40
end

local tails = {}
for k = 1, NKEYS do
  close_span(states[k])
  flush(states[k])
  tails[k] = states[k].tail or ''
end
for mi, off in pairs(marks) do
  local mk = KEYS[NKEYS + mi]
  local cur = tonumber(redis.call('GET', mk))
  if cur == nil or cur < off then redis.call('SET', mk, string.format('%.0f', off)) end
end
return {concat(outcomes), concat(refs), blocks, tails}
"""

# KEYS: marker keys; ARGV[i]: an offset for KEYS[i]. Raises each marker to its offset, never
# lowers it.
_RAISE_MARKERS_LUA = r"""
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]))
  local off = tonumber(ARGV[i])
  if cur == nil or cur < off then redis.call('SET', KEYS[i], string.format('%.0f', off)) end
end
return #KEYS
"""

# u32 window key index, u32 marker key index, price, offset, ts, partition (see the script)
_TICK_RECORD = struct.Struct("<IIdddd")

_APPENDED, _COMPLETE, _REPLAYED = ord("w"), ord("p"), ord("r")
_COUNTED: dict[int, tuple[str, ...]] = {
    ord("p"): ("processed",),
    ord("w"): ("processed", "warming"),
    ord("r"): ("replayed",),
    ord("R"): ("replayed",),
    ord("l"): ("late",),
    ord("d"): ("duplicate",),
    ord("o"): ("too_old",),
}
_REJECTED = {ord("l"): "late", ord("d"): "duplicate"}

#: Redis failures that mean "not now": the batch is retried, never committed.
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,  # a replica promoted mid-failover
)


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """What one `append_batch` did.

    `windows`: every full window, in input order: new ones, and for redelivered ticks the window
    that ended at that tick (replayed=True). `rejected`: ticks not appended (`late`, `duplicate`).
    `counts`: per outcome; `processed` counts every appended tick, `warming` the appended ones
    that did not complete a window yet (a subset of `processed`); `replayed` counts every
    recognised redelivery, `too_old` those beyond the history (skipped, no window).
    """

    windows: list[Window]
    rejected: list[tuple[Tick, str]]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


class WindowStore:
    """Per-symbol windows of `size` prices plus `history` replay entries, in Redis."""

    def __init__(
        self, client: redis.Redis, key_prefix: str, size: int, history: int, source_topic: str
    ) -> None:
        if size < 1 or history < 0:
            raise ValueError("window size must be >= 1 and history >= 0")
        self._prefix = key_prefix
        self.size = size
        self.history = history
        self.source_topic = source_topic
        self._redis = Commands(client)
        self._append_batch = self._redis.script(_APPEND_BATCH_LUA)
        self._raise_markers = self._redis.script(_RAISE_MARKERS_LUA)

    def window_key(self, symbol: str) -> str:
        return f"{self._prefix}:win:{{{symbol}}}"

    def marker_key(self, partition: int, node: str = SINGLE) -> str:
        """On a cluster, one marker per node, under a hash tag that node owns."""
        tag = self._redis.local_tag(node)  # "" on one Redis
        return f"{self._prefix}:mark:{tag + ':' if tag else ''}{self.source_topic}:{partition}"

    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatch:
        """Apply a batch in one atomic script call per Redis node; see the module docstring."""
        if not ticks:
            return WindowBatch([], [])
        try:
            if not self._redis.cluster:
                return self._append_on(SINGLE, ticks)
            by_node = self._redis.group([self.window_key(t.symbol) for t in ticks])
            # A cluster: each node's ticks in one call to it. A node had nothing to apply of a
            # partition none of its ticks came from: its marker of that partition is raised to
            # the batch's last offset there, so every node's markers keep up (see `markers`).
            parts = [
                self._append_on(node, [ticks[i] for i in indexes])
                for node, indexes in by_node.items()
            ]
            tops: dict[int, int] = {}
            for t in ticks:
                tops[t.partition] = max(tops.get(t.partition, -1), t.offset)
            for node in self._redis.nodes():
                had = {ticks[i].partition for i in by_node.get(node, [])}
                rest = [p for p in tops if p not in had]
                if rest:
                    keys = [self.marker_key(p, node) for p in rest]
                    offsets = [tops[p] for p in rest]
                    self._redis.evalsha(self._raise_markers, keys, offsets, node=node)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: window update failed: {exc}") from exc
        return _merge(ticks, parts)

    def _append_on(self, node: str, ticks: Sequence[Tick]) -> WindowBatch:
        key_index: dict[str, int] = {}
        mark_index: dict[int, int] = {}
        pack = _TICK_RECORD.pack
        records = []
        symbol_ids = []
        for t in ticks:
            ki = key_index.setdefault(t.symbol, len(key_index) + 1)
            mi = mark_index.setdefault(t.partition, len(mark_index) + 1)
            symbol_ids.append(ki)
            records.append(pack(ki, mi, t.price, t.offset, t.ts, t.partition))
        keys = [self.window_key(s) for s in key_index]
        keys += [self.marker_key(p, node) for p in mark_index]
        args: list[bytes | int] = [
            self.size,
            self.size + self.history,
            len(key_index),
            b"".join(records),
        ]
        try:
            reply: Any = self._redis.evalsha(self._append_batch, keys, args, node=node)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: window update failed: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            if "tickcast:" in str(exc):
                raise ConfigError(
                    f"window store: {exc}; delete the {self._prefix}:win:* keys to rebuild them"
                ) from None
            raise
        outcomes: bytes = reply[0]
        return self._assemble(ticks, symbol_ids, outcomes, reply[1], reply[2], reply[3])

    def _assemble(
        self,
        ticks: Sequence[Tick],
        symbol_ids: list[int],
        outcomes: bytes,
        refs: bytes,
        blocks: list[bytes],
        tails: list[bytes],
    ) -> WindowBatch:
        """Turn the script's reply into Windows.

        The prices of a symbol, its stored tail then the prices appended in this batch, form one
        read-only float64 array; the window of an appended tick is the W prices of that array
        that end at it, a view. A replayed window is W prices of one of the script's blocks. A
        few numpy calls per symbol, none per price: one small batch (a light load) costs tens of
        microseconds here, not the hundreds a fully vectorised assembly spent in numpy set-up.
        """
        w = self.size
        counts = dict.fromkeys(OUTCOMES, 0)
        for code, names in _COUNTED.items():
            n = outcomes.count(code)
            for name in names:
                counts[name] += n

        appended: dict[int, list[float]] = {}
        for tick, k, code in zip(ticks, symbol_ids, outcomes, strict=True):
            if code in (_COMPLETE, _APPENDED):
                appended.setdefault(k, []).append(tick.price)
        series: dict[int, tuple[npt.NDArray[np.float64], int]] = {}
        for k, new_prices in appended.items():
            tail = tails[k - 1]
            packed = tail + struct.pack(f"<{len(new_prices)}d", *new_prices)
            series[k] = (np.frombuffer(packed, dtype="<f8"), len(tail) // 8)

        replay_rows = np.empty((0, w), dtype="<f8")
        if refs:
            ref = np.frombuffer(refs, dtype="<u4").reshape(-1, 2).astype(np.int64)
            block_len = np.fromiter((len(b) // 8 for b in blocks), dtype=np.int64)
            block_start = np.concatenate(([0], np.cumsum(block_len)[:-1]))
            flat = np.frombuffer(b"".join(blocks), dtype="<f8")
            replay_rows = sliding_window_view(flat, w)[block_start[ref[:, 0] - 1] + ref[:, 1]]
        windows: list[Window] = []
        rejected: list[tuple[Tick, str]] = []
        rank = dict.fromkeys(series, 0)
        i_replay = 0
        for tick, k, code in zip(ticks, symbol_ids, outcomes, strict=True):
            if code in (_COMPLETE, _APPENDED):
                prices, end = series[k]
                end += rank[k]
                rank[k] += 1
                if code == _COMPLETE:
                    windows.append(Window(tick, prices[end - w + 1 : end + 1], False))
            elif code == _REPLAYED:
                windows.append(Window(tick, replay_rows[i_replay], True))
                i_replay += 1
            elif code in _REJECTED:
                rejected.append((tick, _REJECTED[code]))
        return WindowBatch(windows, rejected, counts)

    def markers(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """The highest appended offset per partition, None where no marker exists (state lost?).

        On a cluster, the lowest over the nodes, and None if any node has none: a node that
        lost its state must be rebuilt even when the others did not.
        """
        parts = list(partitions)
        if not parts:
            return {}
        try:
            nodes = self._redis.nodes()
            values = self._redis.mget([self.marker_key(p, n) for n in nodes for p in parts])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: marker read failed: {exc}") from exc
        out: dict[int, int | None] = {}
        for i, p in enumerate(parts):
            per_node = values[i :: len(parts)]
            out[p] = (
                None
                if any(v is None for v in per_node)
                else min(int(v) for v in per_node if v is not None)
            )
        return out


def _merge(ticks: Sequence[Tick], parts: list[WindowBatch]) -> WindowBatch:
    """One WindowBatch, in input order, from the batches of each node's share of `ticks`."""
    index = {id(t): i for i, t in enumerate(ticks)}
    counts = dict.fromkeys(OUTCOMES, 0)
    for batch in parts:
        for name, value in batch.counts.items():
            counts[name] += value
    windows = sorted((w for b in parts for w in b.windows), key=lambda w: index[id(w.tick)])
    rejected = sorted((r for b in parts for r in b.rejected), key=lambda r: index[id(r[0])])
    return WindowBatch(windows, rejected, counts)

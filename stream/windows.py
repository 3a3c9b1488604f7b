"""Rolling price windows in Redis, idempotent under redelivery: one atomic Lua call per batch.

Layout: one string per symbol, `{prefix}:win:{SYMBOL}` (the braces are a Redis Cluster hash tag),
a ring of C entries, in regions so that a window is one or two contiguous byte ranges and an
append copies the tick's bytes as they came:

    [0, 64)              header: 8 little-endian float64: layout version (2), capacity C,
                         count (entries ever appended), lineage start (seq of the first entry of
                         the current partition), last ts, last offset, last partition, first (the
                         oldest seq the key was given; it holds max(first, count - C) on)
    [64, 64 + 8C)        prices (float64, slot = seq mod C): a window is a contiguous range
    then 24C bytes       per slot: source offset, event ts, source partition (float64 each),
                         the tick's own bytes from the script's input

Every number is a float64 because Redis Lua numbers are doubles; event times are limited to
+-2**53 at decode for the same reason, offsets and partitions never get near it. The capacity
follows what redelivery can need (Redis memory is a budget): the ring grows, up to W + history,
rather than overwrite entries not known to be committed, and `trim(committed)` (after commits)
shrinks it to W entries plus those at or above the committed offset (each with the W before it:
its window and the price before that), with 64 free slots: a committed symbol costs
64 + 32 x (W + 64) bytes, 4,032 at W = 60. A key is rewritten with one SET when its capacity changes, so it holds no spare allocation. Keys of
layout 1 (a 56-byte header, a fixed ring) are rewritten as layout 2 when first read.

Per tick, the script decides (same partition as the last applied entry, unless noted):
- first tick of a symbol, or offset above the last applied one: appended if its ts is above the
  last ts, else `late` (older) or `duplicate` (same ts), state unchanged;
- another partition than the last entry's (the topic was repartitioned): a new lineage, judged by
  ts alone as above;
- offset at or below the last applied one: a redelivery. The entry with that offset is looked up
  (binary search over the offsets of the current lineage) and the window that ended there is
  returned (`replayed`), with the same `before` as the first time. An offset not in the history was rejected the first time: the verdict is
  reproduced by comparing with the entry just before it. Beyond the history: `too_old`.

The per-partition marker `{prefix}:mark:{topic}:{partition}` holds the highest offset the store
has judged (appended or not: a late tick is done with too); it is raised in the same call, so
windows and marker cannot disagree after a crash.

Every window comes with `before`, the symbol's price just before its first one, while the key
holds it (NaN otherwise: the symbol's first window, or a key shrunk by an older version): the
window before it is then `[before] + prices[:-1]`, the one whose forecast this window's last price
scores (stream/scoring.py). Trim keeps W entries (what the next append reads) and the W before
each uncommitted one, and the u <= history uncommitted entries with the W before the oldest fit
the ring's W + history: whatever a redelivery can ask for (config keeps history above the
uncommitted span) comes back with the same `before` as the first time. Only past the history, the
oldest window still held has lost its `before` (NaN: not scored again, never scored wrong). The same call also checks, before it changes
anything, that every marker of the batch's partitions that this store instance has written or read
is still there: one gone means Redis lost the state (flushed, restarted empty) and the call
changes nothing and the store raises StateLost. One EXISTS per partition, in the call the batch
makes anyway.

A recreated input topic restarts its offsets below the markers; left alone, its ticks would be
taken for redeliveries too old for the history. `recreated` finds such partitions from their high
watermarks (a marker at or above it was never an offset of this topic) and `start_afresh` discards
their markers and raises their epoch (`{prefix}:epoch:{topic}:{partition}`, beside the marker): the
script labels the partition's new entries with a lineage of partition + 2**24 x epoch, so the old
entries are another lineage and the new ticks are judged by event time alone, as after a
repartitioning.

On a Redis Cluster a batch is one such call per node, each with the ticks of the symbols that node
holds, and each node keeps its own markers (under a hash tag the node owns). Every node gets the
call, with no ticks if it holds none of the batch's symbols, so every node's markers keep up (and
`markers` can take the lowest over the nodes) and a node restarted empty is found on the next
batch whatever symbols it holds. The nodes are not one transaction: the nodes called before the
one that lost its state have applied their share, which the retry after the rebuild sees as
redeliveries (the same windows, flagged replayed).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import redis.exceptions
from numpy.lib.stride_tricks import sliding_window_view

from stream.contracts import Tick, Window
from stream.errors import ConfigError, StateLost, StoreUnavailable
from stream.redisio import SINGLE, Commands

log = logging.getLogger(__name__)

OUTCOMES = ("processed", "warming", "replayed", "late", "duplicate", "too_old")

#: The batch update and a recreated topic's fresh start (KEYS and ARGV documented in each file).
_APPEND_BATCH_LUA = (files("stream") / "windows_append_batch.lua").read_text(encoding="utf-8")
_START_AFRESH_LUA = (files("stream") / "windows_start_afresh.lua").read_text(encoding="utf-8")

# u32 window key index, u32 marker key index, price, offset, ts, partition (see windows_append_batch.lua)
_TICK_RECORD = struct.Struct("<IIdddd")
# per marker key: partition, the batch's highest offset there (-1: none), 1.0 if seen before,
# the committed offset (-1: not known); see the script
_MARK_RECORD = struct.Struct("<dddd")

_APPENDED, _COMPLETE, _REPLAYED = ord("w"), ord("p"), ord("r")
_DONE = ord("0")  # a key that holds no uncommitted entries (the script's `pending`)
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
    redis.exceptions.OutOfMemoryError,  # maxmemory reached with nothing left to evict
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
    """Per-symbol windows of `size` prices plus up to `history` replay entries, in Redis."""

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
        self._start_afresh = self._redis.script(_START_AFRESH_LUA)
        #: (node, partition) of every marker this store wrote or read: one gone means state lost
        self._seen: set[tuple[str, int]] = set()
        #: symbol -> partition of its last tick, for symbols whose keys may hold entries above the
        #: committed offset (appended to since `trim` found them all committed)
        self._uncommitted: dict[str, int] = {}

    def window_key(self, symbol: str) -> str:
        return f"{self._prefix}:win:{{{symbol}}}"

    def marker_key(self, partition: int, node: str = SINGLE) -> str:
        """On a cluster, one marker per node, under a hash tag that node owns."""
        tag = self._redis.local_tag(node)  # "" on one Redis
        return f"{self._prefix}:mark:{tag + ':' if tag else ''}{self.source_topic}:{partition}"

    def epoch_key(self, partition: int, node: str = SINGLE) -> str:
        """How many times the partition started afresh (a recreated topic); beside its marker."""
        tag = self._redis.local_tag(node)
        return f"{self._prefix}:epoch:{tag + ':' if tag else ''}{self.source_topic}:{partition}"

    def append_batch(self, ticks: Sequence[Tick]) -> WindowBatch:
        """Apply a batch in one atomic script call per Redis node; see the module docstring.

        Raises StateLost, before the node that lost them changed anything, when a marker of a
        partition of the batch that this store wrote or read is gone from Redis (flushed,
        restarted empty, a cluster node restarted empty). The store then stops expecting those
        markers: the caller rebuilds the partitions up to the batch and retries it.
        """
        if not ticks:
            return WindowBatch([], [])
        tops: dict[int, int] = {}
        for t in ticks:
            if tops.get(t.partition, -1) < t.offset:
                tops[t.partition] = t.offset
        try:
            marks = {p: (top, -1) for p, top in tops.items()}
            if not self._redis.cluster:
                batch, _ = self._append_on(SINGLE, ticks, marks)
                self._note_uncommitted(ticks)
                return batch
            by_node = self._redis.group([self.window_key(t.symbol) for t in ticks])
            # A cluster: each node's ticks in one call to it, and a call to every other node
            # too, with no ticks: each node raises its own markers of the batch's partitions to
            # the batch's last offset there (see `markers`), and checks them (state lost).
            parts = [
                self._append_on(node, [ticks[i] for i in by_node.get(node, [])], marks)[0]
                for node in self._redis.nodes()
            ]
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: window update failed: {exc}") from exc
        self._note_uncommitted(ticks)
        return _merge(ticks, parts)

    def _note_uncommitted(self, ticks: Sequence[Tick]) -> None:
        uncommitted = self._uncommitted
        for t in ticks:
            uncommitted[t.symbol] = t.partition

    def trim(self, committed: Mapping[int, int]) -> None:
        """Shrink the keys of the symbols of these partitions to what redelivery can still need,
        now that the group has committed up to these offsets (the next offset it will read).

        Call it after commits (often; it is one script call per node, over the symbols that had
        ticks since their last trim). A key keeps its W prices, and, of its entries at or above
        the committed offset, each with the W before it (free room of up to 2 x 64 entries
        besides): once everything is committed a symbol costs one key of at most
        64 + 32 x (W + 128) bytes, 6.1 KB at W = 60. While ticks are uncommitted, a key grows
        to hold them, up to W + history entries.
        """
        symbols = [s for s, p in self._uncommitted.items() if p in committed]
        if not symbols:
            return
        marks = {p: (-1, c) for p, c in committed.items()}
        keys = [self.window_key(s) for s in symbols]
        try:
            for node, indexes in self._redis.group(keys).items():
                on_node = [symbols[i] for i in indexes]
                _, pending = self._append_on(node, [], marks, on_node)
                for symbol, still in zip(on_node, pending, strict=True):
                    if still == _DONE:
                        del self._uncommitted[symbol]
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: window trim failed: {exc}") from exc

    def _append_on(
        self,
        node: str,
        ticks: Sequence[Tick],
        marks: dict[int, tuple[int, int]],
        symbols: Sequence[str] = (),
    ) -> tuple[WindowBatch, bytes]:
        """One script call on `node`: `ticks` (all of symbols it holds), `marks` per partition
        (the offset to raise the marker to, the committed offset; -1 for neither), `symbols`
        (more keys to trim, without ticks)."""
        key_index = {s: i for i, s in enumerate(symbols, 1)}
        mark_index = {p: i for i, p in enumerate(marks, 1)}
        pack = _TICK_RECORD.pack
        records = []
        symbol_ids = []
        for t in ticks:
            ki = key_index.setdefault(t.symbol, len(key_index) + 1)
            symbol_ids.append(ki)
            records.append(pack(ki, mark_index[t.partition], t.price, t.offset, t.ts, t.partition))
        keys = [self.window_key(s) for s in key_index]
        keys += [self.marker_key(p, node) for p in marks]
        keys += [self.epoch_key(p, node) for p in marks]
        seen = self._seen
        packed = b"".join(
            _MARK_RECORD.pack(p, top, top >= 0 and (node, p) in seen, com)
            for p, (top, com) in marks.items()
        )
        args: list[bytes | int] = [
            self.size,
            self.size + self.history,
            len(key_index),
            b"".join(records),
            packed,
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
        partitions = list(marks)
        if len(reply) == 2:  # {'lost', marker indexes}: nothing was applied on this node
            lost = sorted(partitions[i - 1] for i in reply[1])
            self._seen = {(n, p) for n, p in seen if p not in lost}
            log.warning(
                "redis lost the window state partitions=%s node=%s",
                ",".join(f"{self.source_topic}[{p}]" for p in lost),
                node or "-",
            )
            raise StateLost(lost)
        seen.update((node, p) for p, (top, _) in marks.items() if top >= 0)
        outcomes: bytes = reply[0]
        batch = self._assemble(ticks, symbol_ids, outcomes, reply[1], reply[2], reply[3])
        return batch, reply[4]

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
        replay_before = np.empty(0, dtype="<f8")
        if refs:
            ref = np.frombuffer(refs, dtype="<u4").reshape(-1, 2).astype(np.int64)
            block_len = np.fromiter((len(b) // 8 for b in blocks), dtype=np.int64)
            block_start = np.concatenate(([0], np.cumsum(block_len)[:-1]))
            flat = np.frombuffer(b"".join(blocks), dtype="<f8")
            starts = block_start[ref[:, 0] - 1] + ref[:, 1]
            replay_rows = sliding_window_view(flat, w)[starts]
            # index 0 in its block: the key no longer holds the price before the window
            replay_before = np.where(ref[:, 1] > 0, flat[np.maximum(starts - 1, 0)], np.nan)
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
                    before = float(prices[end - w]) if end >= w else math.nan
                    windows.append(Window(tick, prices[end - w + 1 : end + 1], False, before))
            elif code == _REPLAYED:
                before = float(replay_before[i_replay])
                windows.append(Window(tick, replay_rows[i_replay], True, before))
                i_replay += 1
            elif code in _REJECTED:
                rejected.append((tick, _REJECTED[code]))
        return WindowBatch(windows, rejected, counts)

    def recreated(self, high_watermarks: Mapping[int, int]) -> list[int]:
        """The partitions whose topic was recreated: a marker at or above the partition's high
        watermark (the next offset the topic will write) holds an offset this topic never had.
        On a cluster, any node's marker; nothing is expected or changed by this read."""
        parts = list(high_watermarks)
        by_node = self._read_markers(parts)
        return [
            p
            for p in parts
            if any(v is not None and v >= high_watermarks[p] for v in by_node[p].values())
        ]

    def start_afresh(self, partitions: Iterable[int]) -> None:
        """Treat the partitions as a new topic's (see windows_start_afresh.lua): their markers
        are discarded on every node and their epochs raised, so their symbols' entries from the
        old topic are another lineage and the new offsets are judged as new ticks."""
        parts = sorted(set(partitions))
        if not parts:
            return
        try:
            for node in self._redis.nodes():
                keys = [
                    k for p in parts for k in (self.marker_key(p, node), self.epoch_key(p, node))
                ]
                self._redis.evalsha(self._start_afresh, keys, [], node=node)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: fresh start failed: {exc}") from exc
        self._seen = {(n, p) for n, p in self._seen if p not in parts}

    def _read_markers(self, parts: list[int]) -> dict[int, dict[str, int | None]]:
        """Every node's marker of each partition."""
        if not parts:
            return {}
        try:
            nodes = self._redis.nodes()
            values = self._redis.mget([self.marker_key(p, n) for n in nodes for p in parts])
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis: marker read failed: {exc}") from exc
        return {
            p: {
                node: None if v is None else int(v)
                for node, v in zip(nodes, values[i :: len(parts)], strict=True)
            }
            for i, p in enumerate(parts)
        }

    def markers(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """The highest judged offset per partition, None where no marker exists (state lost?).

        On a cluster, the lowest over the nodes, and None if any node has none: a node that
        lost its state must be rebuilt even when the others did not.
        """
        out: dict[int, int | None] = {}
        for p, per_node in self._read_markers(list(partitions)).items():
            # What is read is what a later batch must find again (see append_batch).
            for node, v in per_node.items():
                if v is None:
                    self._seen.discard((node, p))
                else:
                    self._seen.add((node, p))
            values = list(per_node.values())
            out[p] = None if None in values else min(v for v in values if v is not None)
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

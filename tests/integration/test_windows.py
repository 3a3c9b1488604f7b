"""The window store against a real Redis, as small timelines.

Most timelines use W=5 so the windows fit on a line; prices are 100 + offset and event times are
1000 + 10 * offset unless a test says otherwise, so a window is easy to read off.
"""

from __future__ import annotations

import itertools
import math
import random
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream.contracts import Tick
from stream.errors import ConfigError, StateLost, StoreUnavailable
from stream.windows import WindowBatch, WindowStore
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.integration


def tick(offset: int, ts: int | None = None, symbol: str = "A", partition: int = 0) -> Tick:
    return Tick(symbol, 100.0 + offset, 1000 + 10 * offset if ts is None else ts, partition, offset)


def run(offsets: range | list[int], symbol: str = "A") -> list[Tick]:
    return [tick(o, symbol=symbol) for o in offsets]


def windows_of(batch: WindowBatch) -> list[list[float]]:
    return [w.prices.tolist() for w in batch.windows]


def prices(first: int, last: int) -> list[float]:
    """The window of the ticks at offsets first..last (inclusive)."""
    return [100.0 + o for o in range(first, last + 1)]


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> WindowStore:
    return WindowStore(redis_client, key_prefix, size=5, history=4, source_topic="ticks")


def raw_state(client: redis.Redis, store: WindowStore, symbol: str = "A") -> bytes | None:
    value = client.get(store.window_key(symbol))
    assert value is None or isinstance(value, bytes)
    return value


def test_no_window_until_w_prices(store: WindowStore) -> None:
    b = store.append_batch(run(range(4)))
    assert b.windows == []
    assert b.counts["processed"] == 4 and b.counts["warming"] == 4

    b = store.append_batch([tick(4)])
    assert windows_of(b) == [prices(0, 4)]
    assert b.counts["processed"] == 1 and b.counts["warming"] == 0
    assert b.windows[0].replayed is False


def test_steady_state_each_tick_gives_the_last_w_prices(store: WindowStore) -> None:
    got: list[list[float]] = []
    for chunk in (range(0, 1), range(1, 4), range(4, 12), range(12, 13)):
        got += windows_of(store.append_batch(run(chunk)))
    assert got == [prices(o - 4, o) for o in range(4, 13)]


def test_window_ends_with_the_tick_and_is_read_only(store: WindowStore) -> None:
    b = store.append_batch(run(range(7)))
    for w in b.windows:
        assert w.prices[-1] == w.tick.price
        assert w.prices.dtype == np.float64 and w.prices.shape == (5,)
        assert not w.prices.flags.writeable


def test_redelivered_tick_gets_its_original_window_and_changes_nothing(
    store: WindowStore, redis_client: redis.Redis
) -> None:
    store.append_batch(run(range(10)))
    before = raw_state(redis_client, store)

    b = store.append_batch([tick(7)])
    assert windows_of(b) == [prices(3, 7)]
    assert b.windows[0].replayed is True
    assert b.counts == {**b.counts, "replayed": 1, "processed": 0}
    assert raw_state(redis_client, store) == before

    assert windows_of(store.append_batch([tick(10)])) == [prices(6, 10)]


def test_redelivered_batch_gets_the_same_windows(
    store: WindowStore, redis_client: redis.Redis
) -> None:
    store.append_batch(run(range(3)))
    batch = run(range(3, 8))
    first = store.append_batch(batch)
    state = raw_state(redis_client, store)
    marks = store.markers([0])

    again = store.append_batch(batch)
    assert windows_of(again) == windows_of(first) == [prices(o - 4, o) for o in range(4, 8)]
    assert all(w.replayed for w in again.windows)
    assert [w.tick for w in again.windows] == [w.tick for w in first.windows]
    assert again.counts["replayed"] == 5 and again.counts["processed"] == 0
    assert raw_state(redis_client, store) == state
    assert store.markers([0]) == marks == {0: 7}


def test_redelivery_inside_one_batch(store: WindowStore) -> None:
    b = store.append_batch([*run(range(7)), tick(5), tick(7)])
    assert windows_of(b) == [*(prices(o - 4, o) for o in range(4, 7)), prices(1, 5), prices(3, 7)]
    assert [w.replayed for w in b.windows] == [False, False, False, True, False]
    assert b.counts["processed"] == 8 and b.counts["replayed"] == 1


def test_late_and_duplicate_are_rejected_and_not_appended(store: WindowStore) -> None:
    store.append_batch(run(range(5)))  # last ts 1040
    late, dup = tick(5, ts=1039), tick(6, ts=1040)
    b = store.append_batch([late, dup, tick(7)])
    assert b.rejected == [(late, "late"), (dup, "duplicate")]
    assert b.counts["late"] == 1 and b.counts["duplicate"] == 1 and b.counts["processed"] == 1
    assert windows_of(b) == [[101.0, 102.0, 103.0, 104.0, 107.0]]


def test_redelivered_rejects_get_the_same_verdict(
    store: WindowStore, redis_client: redis.Redis
) -> None:
    late, dup = tick(5, ts=1039), tick(6, ts=1040)
    first = store.append_batch([*run(range(5)), late, dup, tick(7)])
    state = raw_state(redis_client, store)

    again = store.append_batch([late, dup, tick(7)])
    assert again.rejected == first.rejected == [(late, "late"), (dup, "duplicate")]
    assert windows_of(again) == [[101.0, 102.0, 103.0, 104.0, 107.0]]
    assert raw_state(redis_client, store) == state


def test_a_rejected_last_message_is_judged_the_same_when_redelivered(store: WindowStore) -> None:
    store.append_batch(run(range(5)))
    late = tick(5, ts=1000)
    assert store.append_batch([late]).rejected == [(late, "late")]
    assert store.append_batch([late]).rejected == [(late, "late")]


def test_history_exhausted_is_too_old_never_a_wrong_window(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = WindowStore(redis_client, key_prefix, size=5, history=2, source_topic="ticks")
    store.append_batch(run(range(20)))
    # the ring holds 7 entries (13..19): only 17, 18 and 19 still have all 5 prices of their window
    b = store.append_batch([tick(10), tick(16), tick(17), tick(19)])
    assert windows_of(b) == [prices(13, 17), prices(15, 19)]
    assert b.counts["too_old"] == 2 and b.counts["replayed"] == 2
    assert b.rejected == []


def test_history_zero_still_replays_the_last_tick(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = WindowStore(redis_client, key_prefix, size=5, history=0, source_topic="ticks")
    store.append_batch(run(range(8)))
    b = store.append_batch([tick(6), tick(7)])
    assert windows_of(b) == [prices(3, 7)]
    assert b.counts["too_old"] == 1


def test_redelivered_warming_tick_yields_no_window(store: WindowStore) -> None:
    store.append_batch(run(range(6)))
    b = store.append_batch([tick(2), tick(5)])
    assert windows_of(b) == [prices(1, 5)]
    assert b.counts["replayed"] == 2 and b.counts["processed"] == 0


def test_two_symbols_interleaved_in_one_partition(store: WindowStore) -> None:
    ticks = [Tick("A" if o % 2 == 0 else "B", 100.0 + o, 1000 + o, 0, o) for o in range(20)]
    first = store.append_batch(ticks)
    a = [w for w in first.windows if w.tick.symbol == "A"]
    b = [w for w in first.windows if w.tick.symbol == "B"]
    assert [w.prices.tolist() for w in a] == [
        [100.0 + o for o in range(end - 8, end + 1, 2)] for end in (8, 10, 12, 14, 16, 18)
    ]
    assert [w.prices.tolist() for w in b] == [
        [100.0 + o for o in range(end - 8, end + 1, 2)] for end in (9, 11, 13, 15, 17, 19)
    ]
    assert [w.tick.offset for w in first.windows] == list(range(8, 20))

    again = store.append_batch(ticks[10:])
    assert windows_of(again) == [w.prices.tolist() for w in first.windows[2:]]
    assert again.counts["replayed"] == 10


def test_a_new_partition_continues_the_window_as_a_new_lineage(store: WindowStore) -> None:
    store.append_batch(run(range(6)))  # partition 0, offsets 0..5, ts up to 1050
    moved = [Tick("A", 200.0 + o, 2000 + o, 1, o) for o in range(3)]
    b = store.append_batch(moved)
    assert windows_of(b)[-1] == [104.0, 105.0, 200.0, 201.0, 202.0]
    assert store.markers([0, 1]) == {0: 5, 1: 2}

    again = store.append_batch([moved[1]])
    assert windows_of(again) == [[103.0, 104.0, 105.0, 200.0, 201.0]]
    assert again.counts["replayed"] == 1

    stale = Tick("A", 1.0, 1060, 0, 6)  # the old partition again, but older than the last tick
    assert store.append_batch([stale]).rejected == [(stale, "late")]


def test_markers_hold_the_highest_judged_offset(store: WindowStore) -> None:
    assert store.markers([0, 1]) == {0: None, 1: None}
    # The late tick at offset 3 is done with as much as an appended one: nothing to rebuild.
    store.append_batch([*run(range(3)), tick(3, ts=0), Tick("B", 1.0, 5, 1, 40)])
    assert store.markers([0, 1, 2]) == {0: 3, 1: 40, 2: None}
    store.append_batch(run(range(2)))  # a redelivery never lowers it
    assert store.markers([0]) == {0: 3}
    assert store.markers([]) == {}


def test_one_script_call_per_batch(store: WindowStore, redis_commands_sent: list[str]) -> None:
    store.append_batch([tick(0)])  # the script is loaded now
    # 100 symbols, each always in the same one of 3 partitions, 10 ticks each
    ticks = [Tick(f"S{i % 100}", 1.0 + i, 1000 + i, (i % 100) % 3, i) for i in range(1000)]
    redis_commands_sent.clear()
    b = store.append_batch(ticks)
    assert redis_commands_sent == ["EVALSHA"]
    assert (
        sum(b.counts[k] for k in ("processed", "late", "duplicate", "replayed", "too_old")) == 1000
    )
    assert b.counts["processed"] == 1000 and b.counts["warming"] == 400
    assert len(b.windows) == 600
    assert store.markers([0, 1, 2]) == {0: 999, 1: 997, 2: 998}


def _lose_state(client: redis.Redis, prefix: str) -> None:
    """What FLUSHALL does to the store, without touching the other tests' keys."""
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    assert keys
    client.delete(*keys)


def test_state_lost_mid_run_is_found_on_the_next_batch_before_anything_changes(
    store: WindowStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    store.append_batch(run(range(8)))
    _lose_state(redis_client, key_prefix)
    with pytest.raises(StateLost) as lost:
        store.append_batch(run(range(8, 10)))
    assert lost.value.partitions == [0]
    assert raw_state(redis_client, store) is None and store.markers([0]) == {0: None}
    # The store stops expecting the marker: after the rebuild the batch goes through.
    store.append_batch(run(range(3, 8)))  # the rebuild, in short
    b = store.append_batch(run(range(8, 10)))
    assert windows_of(b) == [prices(4, 8), prices(5, 9)]


def test_state_lost_names_only_the_partitions_whose_markers_are_gone(
    store: WindowStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    store.append_batch([tick(0), Tick("B", 1.0, 5, 1, 40), Tick("C", 1.0, 5, 2, 7)])
    redis_client.delete(store.marker_key(0), store.marker_key(2))
    with pytest.raises(StateLost) as lost:
        store.append_batch([tick(1), Tick("B", 1.0, 6, 1, 41), Tick("C", 1.0, 6, 2, 8)])
    assert lost.value.partitions == [0, 2]
    assert store.markers([0, 1, 2]) == {0: None, 1: 40, 2: None}
    # A partition outside the batch is not checked now: it will be when its ticks come.
    redis_client.delete(store.marker_key(1))
    store.append_batch([tick(1)])


def test_a_partition_with_only_rejected_ticks_keeps_its_marker(
    store: WindowStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Only late ticks since the loss: the retry after the rebuild must not lose state again."""
    store.append_batch(run(range(6)))
    _lose_state(redis_client, key_prefix)
    late = [tick(6, ts=0), tick(7, ts=0)]
    with pytest.raises(StateLost):
        store.append_batch(late)
    store.append_batch(run(range(1, 6)))  # the rebuild up to offset 6
    assert store.append_batch(late).counts["late"] == 2
    assert store.markers([0]) == {0: 7}
    assert store.append_batch([tick(8, ts=0)]).counts["late"] == 1


def test_markers_read_are_expected_and_a_new_store_expects_nothing(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    first = WindowStore(redis_client, key_prefix, size=5, history=4, source_topic="ticks")
    first.append_batch(run(range(6)))
    # A restarted consumer: nothing expected until it reads the markers (on assignment).
    restarted = WindowStore(redis_client, key_prefix, size=5, history=4, source_topic="ticks")
    assert restarted.markers([0]) == {0: 5}
    _lose_state(redis_client, key_prefix)
    with pytest.raises(StateLost):
        restarted.append_batch([tick(6)])
    fresh = WindowStore(redis_client, key_prefix, size=5, history=4, source_topic="ticks")
    assert fresh.append_batch([tick(6)]).counts["processed"] == 1


def test_redis_restarted_empty_is_state_lost_on_the_next_batch(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    try:
        store = WindowStore(client, "tc", size=5, history=4, source_topic="ticks")
        store.append_batch(run(range(8)))
        server.restart_empty()
        with pytest.raises(StoreUnavailable):  # the connection it had is gone: retried
            store.append_batch(run(range(8, 10)))
        with pytest.raises(StateLost) as lost:
            store.append_batch(run(range(8, 10)))
        assert lost.value.partitions == [0]
        assert client.dbsize() == 0
    finally:
        client.close()
        server.kill()


def test_a_recreated_topic_is_found_from_its_high_watermark_and_starts_afresh(
    store: WindowStore,
) -> None:
    """Issue 15, item 10: the topic deleted and made again while Redis kept its state."""
    store.append_batch(run(range(40)))  # the old topic: offsets 0..39, ts up to 1390
    assert store.recreated({0: 40, 1: 0}) == []  # in step: the marker is below the end
    assert store.recreated({0: 39}) == [0]
    assert store.recreated({0: 0}) == [0]

    new_topic = [Tick("A", 500.0 + o, 5000 + o, 0, o) for o in range(3)]
    assert store.append_batch(new_topic).counts["too_old"] == 3  # what went wrong

    store.start_afresh([0])
    assert store.markers([0]) == {0: None} and store.recreated({0: 0}) == []
    b = store.append_batch(new_topic)
    assert b.counts["processed"] == 3 and b.counts["too_old"] == 0
    assert windows_of(b)[-1] == [138.0, 139.0, 500.0, 501.0, 502.0]
    assert store.markers([0]) == {0: 2}
    # The new topic's redeliveries are recognised; its later ticks go on.
    again = store.append_batch([new_topic[1], Tick("A", 503.0, 5003, 0, 3)])
    assert windows_of(again) == [[137.0, 138.0, 139.0, 500.0, 501.0], [139.0, *range(500, 504)]]
    assert again.counts["replayed"] == 1 and again.counts["processed"] == 1
    # Twice over (recreated again): still a fresh lineage each time.
    store.start_afresh([0])
    b = store.append_batch([Tick("A", 600.0, 6000, 0, 0)])
    assert b.counts["processed"] == 1


def test_a_batch_that_cannot_apply_changes_nothing(
    store: WindowStore, redis_client: redis.Redis
) -> None:
    redis_client.set(store.window_key("B"), b"not a window")
    with pytest.raises(ConfigError, match="not a window"):
        store.append_batch([*run(range(6)), tick(6, symbol="B")])
    assert raw_state(redis_client, store) is None
    assert store.markers([0]) == {0: None}


def test_a_smaller_stored_capacity_than_the_window_is_a_config_error(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    small = WindowStore(redis_client, key_prefix, size=3, history=0, source_topic="ticks")
    small.append_batch(run(range(4)))
    big = WindowStore(redis_client, key_prefix, size=5, history=0, source_topic="ticks")
    with pytest.raises(ConfigError, match="fewer than the window size"):
        big.append_batch([tick(4)])


def test_w60_windows_are_bit_exact(redis_client: redis.Redis, key_prefix: str) -> None:
    store = WindowStore(redis_client, key_prefix, size=60, history=100, source_topic="ticks")
    rng = random.Random(7)
    ticks = [
        Tick("XAUUSD", rng.uniform(1e-3, 1e4), 1_700_000_000_000 + o, 0, o) for o in range(250)
    ]
    got = []
    for start in range(0, 250, 37):
        got += store.append_batch(ticks[start : start + 37]).windows
    expected = np.array([t.price for t in ticks])
    assert len(got) == 250 - 59
    for w in got:
        o = w.tick.offset
        assert w.prices.tobytes() == expected[o - 59 : o + 1].tobytes()

    replay = store.append_batch(ticks[150:])
    assert [w.prices.tobytes() for w in replay.windows] == [w.prices.tobytes() for w in got[91:]]


def test_redis_down_is_store_unavailable(key_prefix: str) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = WindowStore(dead, key_prefix, size=5, history=1, source_topic="ticks")
    with pytest.raises(StoreUnavailable):
        store.append_batch([tick(0)])
    with pytest.raises(StoreUnavailable):
        store.markers([0])
    dead.close()


def test_more_appends_in_one_batch_than_the_ring_holds(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = WindowStore(redis_client, key_prefix, size=3, history=1, source_topic="ticks")
    b = store.append_batch(run(range(11)))
    assert windows_of(b) == [[100.0 + o for o in range(end - 2, end + 1)] for end in range(2, 11)]
    b = store.append_batch([tick(9), tick(10), tick(11)])
    assert windows_of(b) == [[107.0, 108.0, 109.0], [108.0, 109.0, 110.0], [109.0, 110.0, 111.0]]
    assert [w.replayed for w in b.windows] == [True, True, False]


class Mirror:
    """The store's rules over an unbounded Python list, to hold the Redis script to."""

    def __init__(self, size: int, history: int) -> None:
        self.w, self.cap = size, size + history
        self.entries: dict[str, list[Tick]] = {}
        self.lstart: dict[str, int] = {}
        #: the price before the last window `apply` returned (None: the store no longer holds it)
        self.before: float | None = None

    def apply(self, t: Tick) -> tuple[str, list[float] | None]:
        e = self.entries.setdefault(t.symbol, [])
        n = len(e)
        if n == 0 or t.partition != e[-1].partition or t.offset > e[-1].offset:
            if n and t.ts <= e[-1].ts:
                return ("late" if t.ts < e[-1].ts else "duplicate"), None
            if n and t.partition != e[-1].partition:
                self.lstart[t.symbol] = n
            e.append(t)
            if n + 1 >= self.w:
                self.before = e[n - self.w].price if n >= self.w else None
                return "new", [x.price for x in e[-self.w :]]
            return "warming", None
        oldest = max(0, n - self.cap)
        lo = max(oldest, self.lstart.get(t.symbol, 0))
        if e[lo].offset > t.offset:
            return "too_old", None
        j = max(i for i in range(lo, n) if e[i].offset <= t.offset)
        if e[j].offset == t.offset:
            if j + 1 < self.w:
                return "replayed", None
            if j - self.w + 1 < oldest:
                return "too_old", None
            self.before = e[j - self.w].price if j - self.w >= oldest else None
            return "replayed", [x.price for x in e[j - self.w + 1 : j + 1]]
        if t.ts < e[j].ts:
            return "late", None
        return ("duplicate", None) if t.ts == e[j].ts else ("too_old", None)


@st.composite
def timelines(draw: st.DrawFn) -> tuple[int, int, list[list[Tick]]]:
    """A topic of 1-2 partitions, consumed with rewinds (redelivery), cut into batches."""
    size = draw(st.integers(2, 4))
    history = draw(st.integers(0, 4))
    logs: list[list[Tick]] = []
    last_ts = {"A": 0, "B": 0}
    for partition in range(draw(st.integers(1, 2))):
        log = []
        for offset in range(draw(st.integers(1, 25))):
            symbol = draw(st.sampled_from("AB"))
            last_ts[symbol] += draw(st.sampled_from([-3, 0, 1, 2, 5, 5, 5]))
            log.append(
                Tick(
                    symbol,
                    draw(st.sampled_from([1.0, 2.5, 3.0, 7.25])) + offset,
                    last_ts[symbol],
                    partition,
                    offset,
                )
            )
        logs.append(log)
    deliveries: list[Tick] = []
    cursors = [0] * len(logs)
    for _ in range(draw(st.integers(1, 12))):
        p = draw(st.integers(0, len(logs) - 1))
        if draw(st.booleans()):
            cursors[p] = max(0, cursors[p] - draw(st.integers(1, 8)))  # rewind: redelivery
        step = draw(st.integers(1, 10))
        deliveries += logs[p][cursors[p] : cursors[p] + step]
        cursors[p] = min(len(logs[p]), cursors[p] + step)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=6)))
    bounds = [0, *cuts, len(deliveries)]
    batches = [deliveries[a:b] for a, b in itertools.pairwise(bounds) if a < b]
    return size, history, batches


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=timelines())
def test_the_script_follows_the_rules_on_random_timelines(
    redis_client: redis.Redis, key_prefix: str, case: tuple[int, int, list[list[Tick]]]
) -> None:
    size, history, batches = case
    store = WindowStore(
        redis_client, f"{key_prefix}:{uuid.uuid4().hex[:8]}", size, history, source_topic="t"
    )
    mirror = Mirror(size, history)
    first_window: dict[tuple[int, int], list[float]] = {}
    first_before: dict[tuple[int, int], float] = {}
    for batch in batches:
        got = store.append_batch(batch)
        expected = []
        befores = []
        for t in batch:
            verdict, win = mirror.apply(t)
            expected.append((t, verdict, win))
            if win is not None:
                befores.append(math.nan if mirror.before is None else mirror.before)
        # the price before each window, where the store still holds it (live scoring's input)
        assert np.array_equal([w.before for w in got.windows], befores, equal_nan=True)
        assert windows_of(got) == [win for _, _, win in expected if win is not None]
        assert [w.tick for w in got.windows] == [t for t, _, win in expected if win is not None]
        assert got.rejected == [(t, v) for t, v, _ in expected if v in ("late", "duplicate")]
        for w in got.windows:
            key = (w.tick.partition, w.tick.offset)
            if w.replayed:  # a redelivered tick gets exactly its first window back
                assert w.prices.tolist() == first_window[key]
                # and its `before`, unless the history ran out (then not at all, never another)
                assert w.before == first_before[key] or math.isnan(w.before)
            else:
                first_window[key] = w.prices.tolist()
                first_before[key] = w.before
        verdicts = [v for _, v, _ in expected]
        assert got.counts["replayed"] == verdicts.count("replayed")
        assert got.counts["too_old"] == verdicts.count("too_old")
        assert got.counts["processed"] == verdicts.count("new") + verdicts.count("warming")
        assert got.counts["warming"] == verdicts.count("warming")


def _usage(client: redis.Redis, key: str) -> int:
    usage = client.memory_usage(key, samples=0)
    assert isinstance(usage, int)
    return usage


def test_a_key_grows_with_the_uncommitted_ticks_and_shrinks_once_committed(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Issue 12: a window key is 64 + 32 x capacity bytes (MEMORY USAGE adds the allocator's
    rounding and Redis's own ~100 bytes per key); once committed, at most 16 KB."""
    store = WindowStore(redis_client, key_prefix, size=60, history=3072, source_topic="ticks")
    key = store.window_key("A")
    for start in range(0, 3000, 500):
        store.append_batch([tick(o) for o in range(start, start + 500)])
    raw = raw_state(redis_client, store)
    assert raw is not None
    cap = int(np.frombuffer(raw[:64], "<f8")[1])
    assert len(raw) == 64 + 32 * cap and 3000 <= cap <= 3132
    # jemalloc rounds up to its size class: at most a quarter more
    assert 64 + 32 * cap <= _usage(redis_client, key) <= (64 + 32 * cap) * 1.25 + 200

    store.trim({0: 2900})  # offsets 2900..2999 may still be redelivered
    raw = raw_state(redis_client, store)
    assert raw is not None and len(raw) <= 64 + 32 * (100 + 59 + 128)
    again = store.append_batch([tick(o) for o in range(2900, 3000)])
    assert windows_of(again) == [prices(o - 59, o) for o in range(2900, 3000)]
    assert store.append_batch([tick(2700)]).counts["too_old"] == 1  # committed long ago

    store.trim({0: 3000})
    raw = raw_state(redis_client, store)
    assert raw is not None and len(raw) <= 64 + 32 * (60 + 128)
    assert _usage(redis_client, key) <= 16_384
    assert windows_of(store.append_batch([tick(3000)])) == [prices(2941, 3000)]
    assert _usage(redis_client, key) <= 4_300  # 64 + 32 x (60 + 64) = 4,032 bytes, and Redis's own


def test_trim_touches_only_symbols_with_ticks_since_and_of_the_given_partitions(
    store: WindowStore, redis_commands_sent: list[str]
) -> None:
    store.append_batch([Tick("A", 1.0 + o, o, 0, o) for o in range(10)])
    store.append_batch([Tick("B", 1.0 + o, o, 1, o) for o in range(10)])
    redis_commands_sent.clear()
    store.trim({2: 5})
    assert redis_commands_sent == []
    store.trim({0: 10, 1: 5})
    assert redis_commands_sent == ["EVALSHA"]
    store.trim({0: 10})  # A is all committed: nothing left to do
    assert redis_commands_sent == ["EVALSHA"]


def _v1_key(entries: list[Tick], cap: int) -> bytes:
    """A window key as layout 1 wrote it (56-byte header, a fixed ring of `cap` entries)."""
    prices, meta = bytearray(8 * cap), bytearray(24 * cap)
    for seq, t in enumerate(entries):
        slot = seq % cap
        prices[8 * slot : 8 * slot + 8] = np.float64(t.price).tobytes()
        meta[24 * slot : 24 * slot + 24] = np.array([t.offset, t.ts, t.partition], "<f8").tobytes()
    last = entries[-1]
    header = np.array([1, cap, len(entries), 0, last.ts, last.offset, last.partition], "<f8")
    return header.tobytes() + bytes(prices) + bytes(meta)


def test_a_key_of_layout_1_is_read_and_rewritten_as_layout_2(
    store: WindowStore, redis_client: redis.Redis
) -> None:
    redis_client.set(store.window_key("A"), _v1_key(run(range(12)), cap=9))
    b = store.append_batch([tick(8), tick(12)])
    assert windows_of(b) == [prices(4, 8), prices(8, 12)]
    assert b.windows[0].replayed and not b.windows[1].replayed
    raw = raw_state(redis_client, store)
    assert raw is not None and np.frombuffer(raw[:8], "<f8")[0] == 2


# ------------------------------------------------------------ the price before each window


def befores_of(batch: WindowBatch) -> list[float]:
    return [w.before for w in batch.windows]


def test_each_window_carries_the_price_before_it(store: WindowStore) -> None:
    """Live scoring's input: the window before W_t is [before] + W_t[:-1]; the symbol's first
    window has none."""
    got = store.append_batch(run(range(7)))
    assert np.array_equal(befores_of(got), [math.nan, 100.0, 101.0], equal_nan=True)
    # across batches: the stored tail reaches one price further back than the window
    got = store.append_batch([tick(7)])
    assert befores_of(got) == [102.0]
    got = store.append_batch(run(range(8, 10)))
    assert befores_of(got) == [103.0, 104.0]


def test_the_price_before_survives_trim_and_comes_back_on_redelivery(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = WindowStore(redis_client, key_prefix, size=5, history=64, source_topic="ticks")
    first = store.append_batch(run(range(100)))
    store.trim({0: 100})  # all committed: the key shrinks to W entries
    raw = raw_state(redis_client, store)
    assert raw is not None and len(raw) <= 64 + 32 * (5 + 64)
    assert befores_of(store.append_batch([tick(100)])) == [195.0]  # p(100 - W)

    store.append_batch(run(range(101, 140)))
    store.trim({0: 130})  # 130..139 may be redelivered: each keeps its window and the price before
    raw = raw_state(redis_client, store)
    assert raw is not None and len(raw) <= 64 + 32 * (10 + 5 + 64)
    again = store.append_batch(run(range(130, 140)))
    assert all(w.replayed for w in again.windows)
    assert befores_of(again) == [100.0 + o - 5 for o in range(130, 140)]
    # a redelivery in the first batch's span gets its first `before` back too
    replay = WindowStore(redis_client, f"{key_prefix}:b", size=5, history=64, source_topic="t")
    replay.append_batch(run(range(100)))
    assert np.array_equal(
        befores_of(replay.append_batch(run(range(40, 100)))),
        befores_of(first)[36:],
        equal_nan=True,
    )


def test_past_the_history_the_oldest_window_loses_its_before_never_gets_another(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = WindowStore(redis_client, key_prefix, size=5, history=2, source_topic="ticks")
    store.append_batch(run(range(20)))
    # the ring holds 7 entries (13..19): 17's window is 13..17, the price before it is gone
    b = store.append_batch([tick(17), tick(18), tick(19)])
    assert np.array_equal(befores_of(b), [math.nan, 113.0, 114.0], equal_nan=True)

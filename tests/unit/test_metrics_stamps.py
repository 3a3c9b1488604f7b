"""metrics.tick_timestamps (issue 14): one walk along the records instead of a dict per batch,
held equal to the dict lookup it replaced, for forecasts in input order (the pipeline's) and in
any other order (the fallback), with records that have no forecast and forecasts with no record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.contracts import Forecast, Record, Source
from stream.metrics import tick_timestamps


def forecast(partition: int, offset: int) -> Forecast:
    return Forecast(
        "A", 1, 1, 1.0, 1.0, 1.0, 0.8, 1.0, "m", "h", False, Source("t", partition, offset), 0
    )


def by_dict(records: list[Record], forecasts: list[Forecast]) -> list[int]:
    stamps = {(r.partition, r.offset): r.timestamp for r in records}
    return [stamps.get((f.source.partition, f.source.offset), 0) for f in forecasts]


positions = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50)), unique=True, max_size=40)


@given(
    positions=positions,
    stamps=st.lists(st.integers(-1, 2**41), min_size=40, max_size=40),
    data=st.data(),
)
def test_equal_to_the_dict_lookup(
    positions: list[tuple[int, int]], stamps: list[int], data: st.DataObject
) -> None:
    records = [
        Record("t", p, o, b"A", b"{}", ts) for (p, o), ts in zip(positions, stamps, strict=False)
    ]
    # the pipeline's case: a subsequence of the records, in their order
    kept = data.draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)))
    in_order = [forecast(r.partition, r.offset) for r, k in zip(records, kept, strict=True) if k]
    assert tick_timestamps(records, in_order) == by_dict(records, in_order)
    # any order, and forecasts whose record is not in the batch
    extra = data.draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60)), max_size=5))
    shuffled = data.draw(st.permutations(in_order + [forecast(p, o) for p, o in extra]))
    assert tick_timestamps(records, shuffled) == by_dict(records, shuffled)


def test_a_walk_that_misses_falls_back_whole() -> None:
    records = [Record("t", 0, o, b"A", b"{}", 100 + o) for o in range(5)]
    forecasts = [forecast(0, 3), forecast(0, 1), forecast(1, 2)]
    assert tick_timestamps(records, forecasts) == [103, 101, 0]

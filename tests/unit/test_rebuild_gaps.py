"""Which committed offsets the window store is missing after Redis lost (some of) its state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.rebuild import gaps


def test_store_in_step_needs_nothing() -> None:
    # The marker is the last applied offset; committed is the next offset to read.
    assert gaps({0: 100}, {0: 99}, {0: 0}, max_ticks=10_000) == {}


def test_store_ahead_of_the_commit_needs_nothing() -> None:
    # A crash after applying but before committing: redelivery handles it, not a rebuild.
    assert gaps({0: 100}, {0: 140}, {0: 0}, max_ticks=10_000) == {}


def test_flushed_store_reads_from_the_oldest_retained_offset() -> None:
    assert gaps({0: 100, 1: 50}, {0: None, 1: None}, {0: 10, 1: 0}, 10_000) == {
        0: (10, 100),
        1: (0, 50),
    }


def test_older_snapshot_reads_only_what_it_missed() -> None:
    assert gaps({0: 100}, {0: 79}, {0: 0}, max_ticks=10_000) == {0: (80, 100)}


def test_read_back_is_bounded() -> None:
    assert gaps({0: 1_000_000}, {0: None}, {0: 0}, max_ticks=5_000) == {0: (995_000, 1_000_000)}


def test_nothing_committed_nothing_to_rebuild() -> None:
    assert gaps({0: 0, 1: -1001}, {0: None, 1: None}, {0: 0, 1: 0}, 10_000) == {}


@given(
    end=st.integers(0, 10_000),
    marker=st.none() | st.integers(-1, 12_000),
    low=st.integers(0, 10_000),
    cap=st.integers(0, 20_000),
)
def test_ranges_stay_inside_what_is_committed_and_retained(
    end: int, marker: int | None, low: int, cap: int
) -> None:
    low = min(low, end)
    for start, stop in gaps({0: end}, {0: marker}, {0: low}, cap).values():
        assert low <= start < stop == end
        assert stop - start <= cap
        if marker is not None:
            assert start > marker

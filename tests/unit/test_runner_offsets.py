"""Which offsets a batch commits and where a failed batch rewinds to."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from stream.runner import _first_offsets, _next_offsets


@dataclass(frozen=True)
class Msg:
    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def test_commit_is_one_past_the_last_offset_per_partition() -> None:
    batch = [Msg("t", 0, 5), Msg("t", 1, 9), Msg("t", 0, 6), Msg("t", 1, 10)]
    got = {(tp.partition, tp.offset) for tp in _next_offsets(batch)}  # type: ignore[arg-type]
    assert got == {(0, 7), (1, 11)}


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000)), min_size=1, max_size=50))
def test_rewind_point_is_the_first_offset_seen(pairs: list[tuple[int, int]]) -> None:
    # Messages of one partition arrive in offset order; build such a batch.
    by_part: dict[int, list[int]] = {}
    for p, o in pairs:
        by_part.setdefault(p, []).append(o)
    batch = [Msg("t", p, o) for p, offs in by_part.items() for o in sorted(set(offs))]
    first = {tp.partition: tp.offset for tp in _first_offsets(batch)}  # type: ignore[arg-type]
    nxt = {tp.partition: tp.offset for tp in _next_offsets(batch)}  # type: ignore[arg-type]
    for p, offs in by_part.items():
        assert first[p] == min(offs)
        assert nxt[p] == max(offs) + 1

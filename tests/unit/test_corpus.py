"""The malformed-message corpus (tests/corpus.py): decode_batch gives every entry its reason."""

from __future__ import annotations

import collections
import hashlib

import pytest

from stream.contracts import REASONS, Record, dead_letter_headers, decode_batch
from tests.corpus import malformed

NOW = 1_764_000_000_000  # the consumer's clock in these tests
MAX_FUTURE_MS = 86_400_000
MAX_BYTES = 65_536


def decode(
    corpus: list[tuple[bytes | None, bytes | None, str]], max_bytes: int, **options: int | None
) -> dict[int, str]:
    records = [Record("ticks", 2, i, key, value) for i, (key, value, _) in enumerate(corpus)]
    ticks, rejected = decode_batch(records, max_bytes, **options)  # type: ignore[arg-type]
    assert ticks == [], [corpus[t.offset] for t in ticks[:3]]
    assert len(rejected) == len(corpus)
    return {r.offset: r.reason for r in rejected}


def mismatches(
    corpus: list[tuple[bytes | None, bytes | None, str]], reasons: dict[int, str]
) -> list[tuple[str, str, bytes | None, bytes | None]]:
    return [
        (expected, reasons[i], key, value[:200] if value else value)
        for i, (key, value, expected) in enumerate(corpus)
        if reasons[i] != expected
    ]


def test_every_entry_of_10000_gets_exactly_its_reason() -> None:
    corpus = malformed(10_000, seed=15, now_ms=NOW, max_future_ms=MAX_FUTURE_MS)
    assert len(corpus) >= 10_000
    reasons = decode(corpus, MAX_BYTES, max_ts=NOW + MAX_FUTURE_MS)
    assert mismatches(corpus, reasons) == []
    counts = collections.Counter(expected for _, _, expected in corpus)
    assert set(counts) == set(REASONS), set(REASONS) - set(counts)


def test_the_corpus_is_the_same_for_a_seed_and_differs_between_seeds() -> None:
    first = malformed(2_000, seed=1, now_ms=NOW)
    assert first == malformed(2_000, seed=1, now_ms=NOW)
    assert first != malformed(2_000, seed=2, now_ms=NOW)


def test_sizes_a_few_values_of_megabytes_the_rest_within_the_limit() -> None:
    cap = 3 * 1024 * 1024
    corpus = malformed(5_000, seed=3, max_oversize_bytes=cap, huge=3)
    sizes = [len(value or b"") for _, value, _ in corpus]
    huge = [size for size in sizes if size > 1_048_576]
    assert len(huge) == 3 and max(huge) <= cap
    for (_, _, expected), size in zip(corpus, sizes, strict=True):
        assert (size > MAX_BYTES) == (expected == "oversize"), (expected, size)
    assert any(MAX_BYTES < size <= MAX_BYTES + 2 for size in sizes)  # just over the limit


def test_a_huge_dead_letter_is_cut_to_the_bound_with_its_size_and_digest() -> None:
    corpus = malformed(500, seed=4, max_oversize_bytes=2_500_000, huge=2)
    records = [Record("ticks", 0, i, key, value) for i, (key, value, _) in enumerate(corpus)]
    _, rejected = decode_batch(records, MAX_BYTES, dead_letter_max_bytes=1_000_000)
    cut = [r for r in rejected if r.original_size is not None]
    assert len(cut) == 2
    for r in cut:
        original = corpus[r.offset][1]
        assert original is not None and r.value == original[:1_000_000]
        headers = dict(dead_letter_headers(r))
        assert headers["error.truncated"] == str(len(original)).encode()
        assert headers["source.sha256"] == hashlib.sha256(original).hexdigest().encode()


@pytest.mark.parametrize(("max_bytes", "seed"), [(64, 5), (256, 6), (4_096, 7), (1_000_000, 8)])
def test_other_limits_and_no_clock(max_bytes: int, seed: int) -> None:
    """Without a clock there are no future entries; with a small limit, what is long is oversize."""
    corpus = malformed(
        1_000, seed=seed, max_message_bytes=max_bytes, max_oversize_bytes=2 * max_bytes
    )
    assert len(corpus) == 1_000
    assert all(expected != "future" for _, _, expected in corpus)
    reasons = decode(corpus, max_bytes)
    assert mismatches(corpus, reasons) == []

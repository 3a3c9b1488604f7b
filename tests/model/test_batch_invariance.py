"""A window's forecast is the same bits whatever batch it runs in (DESIGN.md, Wire contracts).

A redelivered tick whose cached forecast has expired is recomputed in whatever batch the consumer
happens to hold; the republished forecast must equal the first one bit for bit. ONNX Runtime's
kernels are not batch-invariant (its Softplus runs rows in blocks of 4 with a different exp for the
remainder: 1,214 of 3,000 gold windows differed between batch 1 and one batch of 3,000), so the
predictor runs every call on a fixed number of rows. These tests hold it to that, bitwise.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.data import GOLD_CSV, load_prices
from models.split import windows_for
from stream.config import ModelSettings
from stream.predictor import CHUNK_ROWS, OnnxPredictor, Predictor, load_predictor

WINDOW = 60
GOLD_POOL = 3000


@cache
def gold_windows() -> np.ndarray:
    """The last GOLD_POOL windows of the bundled gold series."""
    prices = load_prices(GOLD_CSV).prices
    windows = windows_for(prices, len(prices) - GOLD_POOL + 1, len(prices) + 1, WINDOW)
    windows.setflags(write=False)
    return windows


@cache
def onnx(threads: int = 1) -> Predictor:
    return load_predictor(ModelSettings(backend="onnx", intra_op_threads=threads), WINDOW)


def one_by_one(predictor: Predictor, windows: np.ndarray) -> np.ndarray:
    out = [predictor.predict_batch(windows[i : i + 1]) for i in range(len(windows))]
    return np.vstack(out) if out else np.zeros((0, len(predictor.quantiles)))


@cache
def gold_alone() -> np.ndarray:
    """Each gold window's forecast from a batch of one: the answer every other batch must give."""
    out = one_by_one(onnx(), gold_windows())
    out.setflags(write=False)
    return out


def differing_rows(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    # bitwise, so that -0.0 vs 0.0 or two NaN payloads would count as different too
    return int(np.sum(np.any(a.view(np.uint64) != b.view(np.uint64), axis=1)))


def scale_free_window(seed: int) -> np.ndarray:
    """A random walk at a random price scale: the model sees log(p_i / p_last), any scale is valid."""
    rng = np.random.default_rng(seed)
    scale = 10.0 ** rng.uniform(-4, 6)
    volatility = 10.0 ** rng.uniform(-5, -1)
    return scale * np.exp(np.cumsum(rng.normal(0.0, volatility, WINDOW)))


def test_the_serving_backend_uses_fixed_chunks() -> None:
    assert isinstance(onnx(), OnnxPredictor)
    # a multiple of the 4-row blocks of ONNX Runtime's element-wise kernels: no row in a remainder
    assert CHUNK_ROWS % 4 == 0


def test_3000_gold_windows_in_one_batch_equal_each_alone() -> None:
    together = onnx().predict_batch(gold_windows())
    assert together.shape == (GOLD_POOL, 3)
    assert np.ptp(together[:, 1]) > 1e-4  # the outputs vary, so equality means something
    assert differing_rows(together, gold_alone()) == 0


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 31, 33, 256, 1000])
def test_every_position_of_a_batch_equals_the_window_alone(size: int) -> None:
    """Each size, each position in it (before, inside and after a chunk boundary)."""
    windows = gold_windows()[-size:]
    assert differing_rows(onnx().predict_batch(windows), gold_alone()[-size:]) == 0


# windows whose Softplus rounds differently in the scalar remainder (found before the fix)
@pytest.mark.parametrize("target", [0, 13, 31, 1215, 2998])
def test_a_window_gives_the_same_bits_at_every_position_of_a_chunk(target: int) -> None:
    """One window moved through positions 0 .. 2 chunks + 1, among other neighbours each time."""
    window = gold_windows()[target]
    expected = gold_alone()[target].view(np.uint64).tolist()
    neighbours = gold_windows()[:1000]
    for position in range(2 * CHUNK_ROWS + 2):
        before = neighbours[7 * position : 8 * position]
        after = neighbours[-(position % 4) :] if position % 4 else neighbours[:0]
        out = onnx().predict_batch(np.vstack([before, window[None, :], after]))
        assert out[position].view(np.uint64).tolist() == expected, f"at position {position}"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    gold=st.lists(st.integers(0, GOLD_POOL - 1), min_size=0, max_size=600),
    random_seeds=st.lists(st.integers(0, 2**32 - 1), max_size=12),
    interleave_seed=st.integers(0, 2**32 - 1),
)
def test_any_batch_composition_equals_each_window_alone(
    gold: list[int], random_seeds: list[int], interleave_seed: int
) -> None:
    """Random subsets, orders and duplicates of gold windows mixed with random scale-free windows."""
    if not gold and not random_seeds:
        gold = [0]
    randoms = np.array([scale_free_window(s) for s in random_seeds]).reshape(-1, WINDOW)
    windows = np.vstack([gold_windows()[gold], randoms])
    expected = np.vstack([gold_alone()[gold], one_by_one(onnx(), randoms)])
    order = np.random.default_rng(interleave_seed).permutation(len(windows))
    out = onnx().predict_batch(windows[order])
    assert differing_rows(out, expected[order]) == 0


@pytest.mark.parametrize("threads", [2, 8])
def test_the_intra_op_thread_count_changes_no_row(threads: int) -> None:
    """Threads split a call's work; neither the split nor the thread count may change a row."""
    predictor = onnx(threads)
    windows = gold_windows()[:1000]
    assert differing_rows(predictor.predict_batch(windows), gold_alone()[:1000]) == 0
    assert differing_rows(one_by_one(predictor, windows[:40]), gold_alone()[:40]) == 0


def test_the_reference_backend_is_batch_invariant_too() -> None:
    """TensorFlow (oneDNN) differs by batch size too (247 of 300 rows); fixed chunks cure it."""
    pytest.importorskip("tensorflow")
    tf = load_predictor(ModelSettings(backend="tensorflow"), WINDOW)
    windows = gold_windows()[:1000]
    together = tf.predict_batch(windows)
    assert differing_rows(together[:100], one_by_one(tf, windows[:100])) == 0
    order = np.random.default_rng(7).permutation(len(windows))
    assert differing_rows(tf.predict_batch(windows[order]), together[order]) == 0

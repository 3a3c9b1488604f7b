"""cache.digests (issue 14: the dtype checked by identity, the array hashed through its own
buffer) against the definition written out, for any values and any layout a window may come in."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stream.cache import digests


def reference(values: npt.NDArray[Any], horizon: int) -> str:
    data = np.asarray(values, dtype="<f8").tobytes() + struct.pack("<q", horizon)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@given(
    values=hnp.arrays(np.float64, st.integers(1, 80), elements=st.floats(allow_nan=True)),
    horizon=st.integers(1, 5),
)
def test_digests_follow_the_definition_in_every_layout(
    values: npt.NDArray[np.float64], horizon: int
) -> None:
    series = np.frombuffer(np.concatenate([values, values]).tobytes(), dtype="<f8")
    layouts = [
        values,
        series[: len(values)],  # a read-only view of a longer series, as the store hands out
        np.repeat(values, 2)[::2],  # strided
        values.astype(">f8"),  # big-endian
        values.astype(np.dtype("<f8", metadata={"x": 1})),  # equal dtype, another object
    ]
    with np.errstate(over="ignore"):  # another dtype: hashed as its float64 values
        layouts.append(values.astype(np.float32))
    assert digests(layouts, horizon) == [reference(w, horizon) for w in layouts]

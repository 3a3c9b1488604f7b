"""The network's promises: intervals proportional to the window's volatility, sorted quantiles,
calibration factors inside the graph, and the conformal factors of training."""

from __future__ import annotations

import numpy as np
import pytest

from models.train import conformal_factors
from tests.model.builders import relative, trained_looking, windows

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def model() -> object:
    return trained_looking()


def test_the_volatility_branch_scales_with_the_window_s_returns(model: object) -> None:
    from models.cnn_bilstm import set_mix

    w = windows()
    set_mix(model, 0.0)  # the volatility branch alone: exactly proportional to the returns
    base = np.asarray(model(relative(w), training=False))  # type: ignore[operator]
    assert np.ptp(base[:, 2]) > 1e-4  # widths vary across windows: the check means something
    for k in (0.25, 3.0, 8.0):  # also far outside anything training sees
        scaled = np.asarray(model(relative(k * w), training=False))  # type: ignore[operator]
        np.testing.assert_allclose(scaled, k * base, rtol=2e-4, atol=1e-7)
    # mixed with the network, the width keeps at least (1 - mix) of that proportional part
    set_mix(model, 0.6)
    for k in (1.0, 8.0):
        mixed = np.asarray(model(relative(k * w), training=False))  # type: ignore[operator]
        assert np.all(np.diff(mixed, axis=1) >= 0)
        width = mixed[:, 2] - mixed[:, 0]
        assert np.all(width >= 0.4 * k * (base[:, 2] - base[:, 0]) * (1 - 1e-5))
    set_mix(model, 0.5)


def test_calibration_factors_scale_each_gap(model: object) -> None:
    from models.cnn_bilstm import set_calibration

    x = relative(windows(16))
    before = np.asarray(model(x, training=False))  # type: ignore[operator]
    set_calibration(model, 2.0, 0.5)
    after = np.asarray(model(x, training=False))  # type: ignore[operator]
    set_calibration(model, 1.0, 1.0)
    np.testing.assert_allclose(after[:, 1], before[:, 1], rtol=1e-6)
    np.testing.assert_allclose(
        after[:, 1] - after[:, 0], 2.0 * (before[:, 1] - before[:, 0]), rtol=1e-5
    )
    np.testing.assert_allclose(
        after[:, 2] - after[:, 1], 0.5 * (before[:, 2] - before[:, 1]), rtol=1e-5
    )


def test_conformal_factors_by_hand() -> None:
    # median 0, both gaps 1: the scores are -y (lower) and y (upper)
    y = np.arange(1.0, 20.0)  # 19 rows: k = ceil(20 * 0.9) = 18
    q = np.tile([-1.0, 0.0, 1.0], (19, 1))
    lower, upper = conformal_factors(q, -y)
    assert lower == 18.0  # the 18th smallest of 1..19
    _, upper = conformal_factors(q, y)
    assert upper == 18.0
    # gaps of 2: the factor counts gaps, so it halves
    lower2, _ = conformal_factors(2 * q, -y)
    assert lower2 == 9.0
    # after scaling the gap by its factor, a tau share of rows (at most) falls beyond it
    rng = np.random.default_rng(4)
    yy = rng.normal(0, 1, 999)
    lo, hi = conformal_factors(np.tile([-1.0, 0.0, 1.0], (999, 1)), yy)
    assert np.mean(yy < -lo) <= 0.1 and np.mean(yy < -lo) >= 0.098
    assert np.mean(yy > hi) <= 0.1 and np.mean(yy > hi) >= 0.098


def test_an_ensemble_outputs_the_mean_of_its_members() -> None:
    from models.cnn_bilstm import NETWORK_LAYERS, build_model, member_suffix, set_mix

    rng = np.random.default_rng(5)
    ensemble = build_model(60, members=3)
    singles = [build_model(60) for _ in range(3)]
    for member, single in enumerate(singles):
        for name in NETWORK_LAYERS:
            weights = [
                w + rng.normal(0, 0.3, w.shape).astype(np.float32)
                for w in single.get_layer(name).get_weights()
            ]
            single.get_layer(name).set_weights(weights)
            ensemble.get_layer(name + member_suffix(member)).set_weights(weights)
    x = relative(windows(32))
    for mix in (1.0, 0.6):
        for m in (ensemble, *singles):
            set_mix(m, mix)
        mean = np.mean([np.asarray(s(x, training=False)) for s in singles], axis=0)
        out = np.asarray(ensemble(x, training=False))
        assert np.ptp(out[:, 1]) > 1e-5  # the members' medians moved: the check means something
        np.testing.assert_allclose(out, mean, rtol=1e-5, atol=1e-7)
        assert np.all(np.diff(out, axis=1) >= 0)


def test_symmetric_factor_by_hand() -> None:
    from models.train import symmetric_factor

    # median 0, lower gap 1, upper gap 2: the score is max(-y, y / 2)
    y = np.array([-5.0, -1.0, 0.0, 2.0, 3.0, 4.0, 8.0, -0.5, 1.0])  # n = 9: k = ceil(10 * 0.8) = 8
    q = np.tile([-1.0, 0.0, 2.0], (9, 1))
    # scores 5, 1, 0, 1, 1.5, 2, 4, 0.5, 0.5 -> sorted 0, .5, .5, 1, 1, 1.5, 2, 4, 5: the 8th is 4
    assert symmetric_factor(q, y) == 4.0
    # the interval scaled by the factor misses (at most) a 1 - 0.8 share of the rows
    rng = np.random.default_rng(6)
    yy = rng.standard_t(5, 1999) + 0.3  # a drift: the misses need not split evenly
    c = symmetric_factor(np.tile([-1.0, 0.0, 1.5], (1999, 1)), yy)
    miss = (yy < -c) | (yy > 1.5 * c)
    assert 0.199 <= np.mean(miss) <= 0.2

"""The live service swaps models between batches: nothing lost, nothing duplicated, new version out."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from stream.config import ModelSettings
from stream.contracts import decode_forecast
from stream.predictor import load_predictor
from tests.artifacts import artifacts_root, derived_artifact
from tests.e2e.harness import (
    assert_matches_predictor,
    expected_windows,
    gold_feed,
    produce,
    read_topic,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("trigger", ["current-file", "sighup"])
def test_model_swapped_between_batches(
    setup, kafka_bootstrap, tmp_path: Path, trigger: str
) -> None:  # type: ignore[no-untyped-def]
    root, v1 = artifacts_root(tmp_path)
    v2 = derived_artifact(root, v1)
    svc = setup(TICKCAST_MODEL__PATH=str(root)).start()
    feed = gold_feed(symbols=3, rows=120)
    windows = expected_windows(feed)
    before, after = feed[: 3 * 90], feed[3 * 90 :]

    produce(kafka_bootstrap, setup.topics["ticks"], before)
    first = read_topic(kafka_bootstrap, setup.topics["forecasts"], 3 * (90 - 59))
    assert {decode_forecast(v).model_version for _, v, _ in first} == {v1}

    (root / "CURRENT").write_text(v2)
    if trigger == "sighup":
        svc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while svc.metric(f'tickcast_model_info{{version="{v2}"}}') != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert svc.metric("tickcast_model_reloads_total") == 1

    produce(kafka_bootstrap, setup.topics["ticks"], after)
    records = read_topic(kafka_bootstrap, setup.topics["forecasts"], len(windows), settle=2.0)
    forecasts = [decode_forecast(v) for _, v, _ in records]
    assert sorted((f.symbol, f.ts) for f in forecasts) == sorted(windows)  # none lost, none twice
    new = [f for f in forecasts if f.model_version == v2]
    assert len(new) == 3 * 30
    assert_matches_predictor(new, windows, load_predictor(ModelSettings(path=str(root)), 60))

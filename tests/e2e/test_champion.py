"""Champion and challenger with the real `tickcast run`: the challenger forecasts the same windows
to its shadow topic, never the main one, and is scored under its own version; `tickcast models`
shows both with their live scores; `tickcast promote` makes it the served model through the hot
reload, without a forecast lost or repeated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream import config
from stream.contracts import decode_forecast
from stream.predictor import load_predictor
from tests.e2e.harness import (
    ROOT,
    W,
    assert_matches_predictor,
    expected_windows,
    gold_feed,
    produce,
    read_topic,
)

pytestmark = pytest.mark.e2e

SHIPPED = ROOT / "models" / "artifacts"


def tickcast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_challenger_shadows_then_promote_swaps_without_a_lost_forecast(  # type: ignore[no-untyped-def]
    setup, kafka_bootstrap, topic_factory, tmp_path: Path
) -> None:
    champion = (SHIPPED / "CURRENT").read_text().strip()
    [challenger] = [p.name for p in SHIPPED.iterdir() if p.is_dir() and p.name != champion]
    artifacts = tmp_path / "artifacts"  # a folder of artifacts of the test's own: promote edits it
    for version in (champion, challenger):
        shutil.copytree(SHIPPED / version, artifacts / version)
    (artifacts / "CURRENT").write_text(champion + "\n")
    shadow_topic = topic_factory("shadow", 4)
    env = {
        "TICKCAST_MODEL__PATH": str(artifacts),
        "TICKCAST_MODEL__CHALLENGER": challenger,
        "TICKCAST_TOPICS__SHADOW": shadow_topic,
    }
    svc = setup(**env).start()
    topics = setup.topics  # type: ignore[attr-defined]

    full = gold_feed(symbols=2, rows=90)
    first = full[: 2 * 75]
    produce(kafka_bootstrap, topics["ticks"], first)
    windows = expected_windows(first)
    records = read_topic(kafka_bootstrap, topics["forecasts"], len(windows), settle=1.0)
    forecasts = [decode_forecast(v) for _, v, _ in records]
    assert {f.model_version for f in forecasts} == {champion}
    assert sorted((f.symbol, f.ts) for f in forecasts) == sorted(windows)
    shadow = [
        decode_forecast(v)
        for _, v, _ in read_topic(kafka_bootstrap, shadow_topic, len(windows), settle=1.0)
    ]
    assert {f.model_version for f in shadow} == {challenger}
    assert sorted((f.symbol, f.ts) for f in shadow) == sorted(windows)
    settings = config.load()
    challenger_model = load_predictor(
        settings.model.model_copy(update={"path": str(artifacts / challenger)}), W
    )
    assert_matches_predictor(shadow, windows, challenger_model)

    # Both are scored live, each under its own version; `tickcast models` shows it.
    scored = svc.metric_samples("tickcast_scored_total")
    per_version = {v: sum(n for k, n in scored.items() if v in k) for v in (champion, challenger)}
    assert (
        per_version[champion] == per_version[challenger] == len(windows) - 2
    )  # one per symbol unscored
    listed = tickcast(env, "models", "--metrics-url", f"http://127.0.0.1:{svc.port}/metrics")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("│")[1].strip(): line for line in listed.stdout.splitlines() if "│" in line}
    assert "CURRENT" in lines[champion] and "challenger" in lines[challenger]
    assert f"{len(windows) - 2:,}" in lines[challenger]  # its live scored count

    promoted = tickcast(env, "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert (artifacts / "CURRENT").read_text().strip() == challenger
    deadline = time.monotonic() + 30
    while svc.metric("tickcast_model_reloads_total") < 1:
        assert time.monotonic() < deadline, svc.tail(20)
        time.sleep(0.2)

    produce(kafka_bootstrap, topics["ticks"], full[len(first) :])
    every = expected_windows(full)
    records = read_topic(kafka_bootstrap, topics["forecasts"], len(every), settle=2.0)
    after = [decode_forecast(v) for _, v, _ in records]
    keys = [(f.symbol, f.ts) for f in after]
    assert sorted(keys) == sorted(every)  # every window once: none lost, none repeated
    new = {k for k in every if k not in windows}
    assert {f.model_version for f in after if (f.symbol, f.ts) in new} == {challenger}
    # the challenger is the champion now: nothing more in the shadow
    assert len(read_topic(kafka_bootstrap, shadow_topic, len(windows), settle=1.0)) == len(windows)
    assert svc.stop() == 0

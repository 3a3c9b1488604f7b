"""Champion and challenger in one pipeline (model.challenger): the challenger runs on the same
windows in the same batch, in one model call of its own, cached under its own version; its
forecasts are only ever BatchResult.shadow (topics.shadow), never forecasts; it is scored like the
champion, under its own model_version. And `tickcast models` reads live scores off /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream import config
from stream.checkpoint import AtLeastOnce, Topics
from stream.commands.models import live_scores
from stream.errors import ConfigError, ModelError
from stream.metrics import Metrics
from stream.pipeline import BatchResult, Pipeline
from tests.fakes import FakeModel, FakeSink, FakeSource, FakeStore
from tests.unit.test_scoring import MAX, feed

F64 = np.ndarray
ROOT = Path(__file__).resolve().parents[2]


class Challenger(FakeModel):
    """Another model: the champion's quantiles shifted by +0.002."""

    version = "m2"

    def predict_batch(self, windows: F64) -> F64:
        return super().predict_batch(windows) + 0.002


class VersionedCache:
    """The result cache, keyed by model version as the real one is."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self.gets: list[tuple[str, list[str]]] = []

    def get_many(self, digests: Sequence[str], model_version: str) -> list[F64 | None]:
        self.gets.append((model_version, list(digests)))
        return [
            np.frombuffer(self.data[(model_version, d)])
            if (model_version, d) in self.data
            else None
            for d in digests
        ]

    def put_many(self, items: Sequence[tuple[str, F64]], model_version: str) -> None:
        for d, row in items:
            self.data[(model_version, d)] = row.tobytes()


def pipeline(
    store: FakeStore, cache: VersionedCache, champion: FakeModel, challenger: FakeModel | None
) -> Pipeline:
    p = Pipeline(store, cache, champion, "ticks", clock_ms=lambda: 1_700_000_000_000)
    p.challenger = challenger
    return p


def test_the_challenger_forecasts_the_same_windows_but_only_in_the_shadow() -> None:
    champion, challenger = FakeModel(), Challenger()
    cache = VersionedCache()
    p = pipeline(FakeStore(before=True), cache, champion, challenger)
    results = [p.process(feed(6), MAX), p.process(feed(3, 6), MAX)]
    for r in results:
        assert {f.model_version for f in r.forecasts} == {"m1"}
        assert {f.model_version for f in r.shadow} == {"m2"}
        # the same windows, each forecast by both
        assert [(f.symbol, f.ts, f.window_hash) for f in r.forecasts] == [
            (f.symbol, f.ts, f.window_hash) for f in r.shadow
        ]
        for mine, theirs in zip(r.forecasts, r.shadow, strict=True):
            assert theirs.price > mine.price  # the challenger's own numbers
    # one model call each per batch
    assert len(champion.batches) == len(challenger.batches) == 2
    # both cached, each under its own version
    versions = {v for v, _ in cache.data}
    assert versions == {"m1", "m2"}


def test_the_challenger_is_scored_under_its_own_version_against_its_own_forecasts() -> None:
    p = pipeline(FakeStore(before=True), VersionedCache(), FakeModel(), Challenger())
    results = [p.process(feed(5), MAX), p.process(feed(4, 5), MAX)]
    shadow = {(f.symbol, f.source.offset): f for r in results for f in r.shadow}
    by_version: dict[str, list[object]] = {"m1": [], "m2": []}
    for r in results:
        for s in r.scores:
            by_version[s.model_version].append(s)
    assert len(by_version["m1"]) == len(by_version["m2"]) == 6  # windows end at 2..8
    for s in by_version["m2"]:
        before = shadow[(s.symbol, s.source.offset - 1)]  # type: ignore[attr-defined]
        assert (s.price, s.lower, s.upper) == (before.price, before.lower, before.upper)  # type: ignore[attr-defined]


def test_a_restarted_challenger_takes_its_window_before_from_its_own_cache() -> None:
    store, cache = FakeStore(before=True), VersionedCache()
    pipeline(store, cache, FakeModel(), Challenger()).process(feed(6), MAX)
    challenger = Challenger()
    again = pipeline(store, cache, FakeModel(), challenger).process(feed(1, 6), MAX)
    assert [s.model_version for s in again.scores] == ["m1", "m2"]
    # the challenger computed only the new window: its window before came from the cache
    assert [len(b) for b in challenger.batches] == [1]


def test_a_challenger_that_is_the_champion_is_not_run_twice() -> None:
    champion, same = FakeModel(), FakeModel()
    p = pipeline(FakeStore(before=True), VersionedCache(), champion, same)
    r = p.process(feed(6), MAX)
    assert r.shadow == [] and same.batches == [] and len(champion.batches) == 1


def test_shadow_forecasts_go_to_their_topic_and_never_to_the_forecasts_topic() -> None:
    p = pipeline(FakeStore(before=True), VersionedCache(), FakeModel(), Challenger())
    records = feed(7)
    result: BatchResult = p.process(records, MAX)
    for shadow_topic in ("forecasts.shadow", ""):
        sink = FakeSink()
        cp = AtLeastOnce(
            FakeSource(),
            sink,
            Topics("forecasts", "dlq", shadow=shadow_topic),
            commit_interval_s=0.0,
            commit_after=1,
        )
        cp.publish(cp.open_batch(records), result)
        cp.settle()
        by_topic: dict[str, list[bytes]] = {}
        for m in sink.delivered:
            by_topic.setdefault(m.topic, []).append(dict(m.headers or [])["model-version"])
        assert by_topic["forecasts"] == [b"m1"] * len(result.forecasts)
        if shadow_topic:
            assert by_topic[shadow_topic] == [b"m2"] * len(result.shadow)
        else:
            assert set(by_topic) == {"forecasts"}  # only scored


def test_models_reads_live_scores_per_version_off_the_metrics_page() -> None:
    p = pipeline(FakeStore(before=True), VersionedCache(), FakeModel(), Challenger())
    metrics = Metrics(CollectorRegistry())
    scores = [s for r in (p.process(feed(8), MAX),) for s in r.scores]
    metrics.scores.record(scores)
    live = live_scores(generate_latest(metrics.registry).decode())
    assert set(live) == {"m1", "m2"}
    for version, row in live.items():
        mine = [s for s in scores if s.model_version == version]
        assert row["scored"] == len(mine)
        assert row["mae"] == pytest.approx(sum(s.abs_error for s in mine) / len(mine))
        assert row["mase"] == pytest.approx(
            sum(s.abs_error for s in mine) / sum(s.persistence_abs_error for s in mine)
        )
        assert row["coverage"] == pytest.approx(sum(s.hit for s in mine) / len(mine))
        assert row["interval"] == 0.8


class Broken(Challenger):
    def predict_batch(self, windows: F64) -> F64:
        raise ModelError("onnxruntime: the challenger's graph failed")


def test_a_failing_challenger_costs_only_its_shadow_never_the_champions_forecasts() -> None:
    champion = FakeModel()
    p = pipeline(FakeStore(before=True), VersionedCache(), champion, Broken())
    failed: list[str] = []
    p.on_challenger_error = failed.append
    result = p.process(feed(6), MAX)
    assert len(result.forecasts) == 4 and result.shadow == []
    assert {s.model_version for s in result.scores} == {"m1"}
    assert failed == ["m2"]


@pytest.mark.parametrize("topic", ["forecasts", "ticks", "ticks.dlq"])
def test_a_shadow_topic_that_is_another_topic_is_a_config_error(topic: str) -> None:
    with pytest.raises(ConfigError, match=r"topics\.shadow and topics\.\w+ are both"):
        config.load(None, environ={"TICKCAST_TOPICS__SHADOW": topic})
    with pytest.raises(ConfigError, match=r"topics\.scores and topics\.\w+ are both"):
        config.load(None, environ={"TICKCAST_TOPICS__SCORES": topic})


def test_promote_refuses_a_service_pinned_to_one_artifact(tmp_path: Path) -> None:
    pinned = tmp_path / "artifacts" / "v1"
    pinned.mkdir(parents=True)
    (tmp_path / "artifacts" / "CURRENT").write_text("v1\n")
    env = {**os.environ, "TICKCAST_MODEL__PATH": str(pinned), "TICKCAST_MODEL__CHALLENGER": "v2"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "promote"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "names one artifact" in proc.stderr, proc.stderr
    assert (tmp_path / "artifacts" / "CURRENT").read_text() == "v1\n"  # untouched

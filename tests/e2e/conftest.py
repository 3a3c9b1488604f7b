"""Fixtures for tests that run the real `tickcast run` process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream import config
from stream.predictor import load_predictor
from tests.e2e.harness import Service, W


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    """The model the services load: same config file and TICKCAST_MODEL__* environment."""
    return load_predictor(config.load().model, W)


@pytest.fixture
def setup(
    kafka_bootstrap: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    key_prefix: str,
    unique: str,
    tmp_path: Path,
) -> Iterator[Callable[..., Service]]:
    """Make services that share this test's topics, group and key prefix."""
    partitions = 4
    topics = {
        "ticks": topic_factory("ticks", partitions),
        "forecasts": topic_factory("forecasts", partitions),
        "dlq": topic_factory("dlq", 1),
    }
    made: list[Service] = []

    def make(**overrides: str) -> Service:
        env = {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "TICKCAST_KAFKA__GROUP_ID": f"g-{unique}",
            "TICKCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "TICKCAST_KAFKA__INSTANCE_ID": f"i{len(made)}-{unique}",
            "TICKCAST_TOPICS__TICKS": topics["ticks"],
            "TICKCAST_TOPICS__FORECASTS": topics["forecasts"],
            "TICKCAST_TOPICS__DEAD_LETTER": topics["dlq"],
            "TICKCAST_REDIS__URL": redis_url,
            "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
            **overrides,
        }
        svc = Service(tmp_path / f"run-{len(made)}.log", env)
        made.append(svc)
        return svc

    make.topics = topics  # type: ignore[attr-defined]
    make.partitions = partitions  # type: ignore[attr-defined]
    make.group = f"g-{unique}"  # type: ignore[attr-defined]
    yield make
    for svc in made:
        svc.kill_if_running()

"""End to end: the real `tickcast run` process, the real broker and Redis, killed and restarted."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest

from stream.contracts import Forecast, decode_forecast
from tests.e2e.harness import (
    W,
    assert_matches_predictor,
    expected_windows,
    gold_feed,
    group_lag,
    produce,
    read_topic,
)
from tools.feed import BAD_MESSAGES, bad_message

pytestmark = pytest.mark.e2e


def forecasts_of(records) -> list[Forecast]:  # type: ignore[no-untyped-def]
    return [decode_forecast(v) for _, v, _ in records]


def test_every_full_window_gives_the_predictors_forecast(setup, kafka_bootstrap, predictor) -> None:  # type: ignore[no-untyped-def]
    svc = setup().start()
    feed = gold_feed(symbols=5, rows=120)
    windows = expected_windows(feed)
    produce(kafka_bootstrap, setup.topics["ticks"], feed)
    records = read_topic(kafka_bootstrap, setup.topics["forecasts"], len(windows), settle=2.0)
    forecasts = forecasts_of(records)

    assert sorted((f.symbol, f.ts) for f in forecasts) == sorted(windows)  # exactly, no extras
    assert_matches_predictor(forecasts, windows, predictor)
    for key, _, headers in records:
        f = decode_forecast(_)
        assert key == f.symbol.encode()
        assert dict(headers)["model-version"] == predictor.version.encode()
        assert dict(headers)["source-offset"] == str(f.source.offset).encode()
    assert svc.metric("tickcast_forecasts_total") == len(windows)
    assert svc.metric('tickcast_ticks_total{outcome="warming"}') == 5 * (W - 1)


def test_bad_inputs_go_to_the_dead_letter_topic_with_reasons(setup, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    svc = setup().start()
    good = gold_feed(symbols=1, rows=70)
    reasons = []
    feed: list[tuple[bytes | None, bytes]] = []
    for i, msg in enumerate(good):
        feed.append(msg)
        if i % 6 == 3 and len(reasons) < len(BAD_MESSAGES) + 1:
            reason, bad = bad_message(len(reasons))
            reasons.append(reason)
            feed.append((bad.key, bad.value))
    produce(kafka_bootstrap, setup.topics["ticks"], feed)

    dead = read_topic(kafka_bootstrap, setup.topics["dlq"], len(reasons), settle=1.0)
    forecasts = read_topic(kafka_bootstrap, setup.topics["forecasts"], 70 - W + 1, settle=1.0)
    assert sorted(dict(h)["error"].decode() for _, _, h in dead) == sorted(reasons)
    bad_values = {bad_message(i)[1].value for i in range(len(reasons))}
    for _, value, headers in dead:
        h = dict(headers)
        assert value in bad_values  # the original bytes, unchanged
        assert h["source.topic"].decode() == setup.topics["ticks"]
        assert int(h["source.offset"]) >= 0 and h["error.detail"]
    assert len(forecasts) == 70 - W + 1  # the good ticks around the bad ones are all forecast
    assert svc.metric("tickcast_dead_letters_total") == len(reasons)


def _by_key(forecasts: list[Forecast]) -> dict[tuple[str, int, str], list[Forecast]]:
    grouped: dict[tuple[str, int, str], list[Forecast]] = defaultdict(list)
    for f in forecasts:
        grouped[(f.symbol, f.ts, f.model_version)].append(f)
    return grouped


def _fields(f: Forecast) -> tuple[object, ...]:
    """Everything but `cached` and `produced_at`, which may differ between two copies."""
    return tuple(getattr(f, n) for n in f.__slots__ if n not in ("cached", "produced_at"))


@pytest.mark.parametrize("store", ["one Redis", "Redis Cluster"])
@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_sigkill_and_restart_lose_nothing(
    setup, kafka_bootstrap, predictor, guarantee, store, request
) -> None:  # type: ignore[no-untyped-def]
    # Small batches so the kill lands mid-stream, between commits.
    overrides = {
        "TICKCAST_PROCESSING__GUARANTEE": guarantee,
        "TICKCAST_PROCESSING__MAX_BATCH": "50",
    }
    if store == "Redis Cluster":  # three nodes: a batch's windows in one script call per node
        overrides["TICKCAST_REDIS__URL"] = request.getfixturevalue("redis_cluster_url")
    feed = gold_feed(symbols=8, rows=400)
    windows = expected_windows(feed)
    first = setup(**overrides).start()
    produce(kafka_bootstrap, setup.topics["ticks"], feed)
    deadline = time.monotonic() + 60
    while (
        first.metric("tickcast_forecasts_total") < len(windows) // 4 and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    first.signal(signal.SIGKILL)
    first.wait(10)

    second = setup(**overrides)
    second.env["TICKCAST_KAFKA__INSTANCE_ID"] = first.env["TICKCAST_KAFKA__INSTANCE_ID"]
    second.start()
    records = read_topic(
        kafka_bootstrap, setup.topics["forecasts"], len(windows), timeout=90, settle=3.0
    )
    forecasts = forecasts_of(records)
    grouped = _by_key(forecasts)

    assert {(s, t) for s, t, _ in grouped} == set(windows), "a forecast is missing or unexpected"
    for copies in grouped.values():
        assert all(_fields(c) == _fields(copies[0]) for c in copies), "a repeated forecast differs"
    if guarantee == "exactly-once":
        assert len(forecasts) == len(windows), "read_committed saw a forecast twice"
    assert_matches_predictor([c[0] for c in grouped.values()], windows, predictor)


def test_sigterm_drains_commits_and_exits_zero(setup, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    svc = setup().start()
    feed = gold_feed(symbols=4, rows=150)
    windows = expected_windows(feed)
    produce(kafka_bootstrap, setup.topics["ticks"], feed)
    read_topic(kafka_bootstrap, setup.topics["forecasts"], len(windows))
    # The lag gauge agrees with what Kafka's own committed offsets and watermarks give.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        kafka_view = group_lag(
            kafka_bootstrap, setup.group, setup.topics["ticks"], setup.partitions
        )
        ours = {
            int(k.split('partition="')[1].split('"')[0]): v
            for k, v in svc.metric_samples("tickcast_consumer_lag{").items()
        }
        if ours == kafka_view:
            break
        time.sleep(0.5)
    assert ours == kafka_view
    assert svc.get("/readyz")[0] == 200 and svc.get("/healthz")[0] == 200

    started = time.monotonic()
    svc.signal(signal.SIGTERM)
    assert svc.wait(10) == 0
    assert time.monotonic() - started < 10
    assert all(
        v == 0
        for v in group_lag(
            kafka_bootstrap, setup.group, setup.topics["ticks"], setup.partitions
        ).values()
    )


def test_two_consumers_in_one_group_share_the_partitions(setup, kafka_bootstrap) -> None:  # type: ignore[no-untyped-def]
    a = setup().start()
    b = setup().start(wait_ready=False)
    b.wait_ready(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shares = (
            a.metric("tickcast_assigned_partitions"),
            b.metric("tickcast_assigned_partitions"),
        )
        if shares[0] > 0 and shares[1] > 0 and sum(shares) == setup.partitions:
            break
        time.sleep(0.3)
    assert shares[0] > 0 and shares[1] > 0 and sum(shares) == setup.partitions
    feed = gold_feed(symbols=8, rows=100)
    windows = expected_windows(feed)
    produce(kafka_bootstrap, setup.topics["ticks"], feed)
    forecasts = forecasts_of(
        read_topic(kafka_bootstrap, setup.topics["forecasts"], len(windows), settle=2.0)
    )
    assert sorted((f.symbol, f.ts) for f in forecasts) == sorted(windows)
    assert a.metric("tickcast_forecasts_total") > 0 and b.metric("tickcast_forecasts_total") > 0

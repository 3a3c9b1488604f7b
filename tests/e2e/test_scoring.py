"""Live scoring end to end: the real `tickcast run` with the scores topic on, a replayed gold series,
every score checked by hand against the published forecasts, across a SIGKILL and a restart."""

from __future__ import annotations

import itertools
import signal
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest

from stream.contracts import Forecast, Score, decode_forecast, decode_score
from tests.e2e.harness import expected_windows, gold_feed, produce, read_topic

pytestmark = pytest.mark.e2e


def _fields(
    x: Forecast | Score, skip: tuple[str, ...] = ("cached", "produced_at")
) -> tuple[object, ...]:
    return tuple(getattr(x, n) for n in x.__struct_fields__ if n not in skip)


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_scores_are_the_forecasts_judged_by_the_next_tick_across_a_sigkill(  # type: ignore[no-untyped-def]
    setup, kafka_bootstrap, topic_factory, predictor, guarantee
) -> None:
    assert list(predictor.quantiles) == [0.1, 0.5, 0.9]  # the forecast carries every quantile
    scores_topic = topic_factory("scores", 4)
    overrides = {
        "TICKCAST_PROCESSING__GUARANTEE": guarantee,
        "TICKCAST_PROCESSING__MAX_BATCH": "50",  # small batches: the kill lands mid-stream
        "TICKCAST_TOPICS__SCORES": scores_topic,
        "TICKCAST_SCORING__SYMBOLS": '["XAU"]',
    }
    feed = gold_feed(symbols=4, rows=200)
    windows = expected_windows(feed)
    ticks = [orjson.loads(v) for _, v in feed]
    # every window after a symbol's first scores the forecast of its window before
    by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in ticks:
        by_symbol[str(t["symbol"])].append(t)
    before_ts: dict[tuple[str, int], int] = {}
    price_at: dict[tuple[str, int], float] = {}
    for symbol, series in by_symbol.items():
        for prev, t in itertools.pairwise(series):
            before_ts[(symbol, int(t["ts"]))] = int(prev["ts"])
        for t in series:
            price_at[(symbol, int(t["ts"]))] = float(t["price"])
    expected = {k for k in windows if (k[0], before_ts.get(k, -1)) in windows}
    assert len(expected) == len(windows) - 4

    first = setup(**overrides).start()
    produce(kafka_bootstrap, setup.topics["ticks"], feed)
    deadline = time.monotonic() + 60
    while first.metric("tickcast_scored_total") < len(expected) // 4:
        assert time.monotonic() < deadline, "no scores"
        time.sleep(0.05)
    # (its series, read the moment before the kill: the restarted instance scores only what was
    # left, which under exactly-once may hold none of XAU's ticks)
    named_before = first.metric_samples("tickcast_scored_total")
    first.signal(signal.SIGKILL)
    first.wait(10)
    second = setup(**overrides)
    second.env["TICKCAST_KAFKA__INSTANCE_ID"] = first.env["TICKCAST_KAFKA__INSTANCE_ID"]
    second.start()

    forecasts = [
        decode_forecast(v)
        for _, v, _ in read_topic(
            kafka_bootstrap, setup.topics["forecasts"], len(windows), timeout=90, settle=1.0
        )
    ]
    records = read_topic(kafka_bootstrap, scores_topic, len(expected), timeout=60, settle=3.0)
    scores = [decode_score(v) for _, v, _ in records]
    published = {(f.symbol, f.ts): f for f in forecasts}
    assert set(published) == set(windows)

    copies: dict[tuple[str, int], list[Score]] = defaultdict(list)
    for (key, _, headers), s in zip(records, scores, strict=True):
        copies[(s.symbol, s.ts)].append(s)
        assert key == s.symbol.encode()
        assert dict(headers)["model-version"] == predictor.version.encode()
    assert set(copies) == expected, "a score is missing or unexpected"
    for same in copies.values():  # a republished score is the same score
        assert all(_fields(c, ()) == _fields(same[0], ()) for c in same)
    if guarantee == "exactly-once":
        assert len(scores) == len(expected), "read_committed saw a score twice"

    for (symbol, ts), (s, *_) in copies.items():
        f = published[(symbol, before_ts[(symbol, ts)])]  # the forecast made one tick before
        actual = price_at[(symbol, ts)]
        assert (s.window_hash, s.price, s.lower, s.upper, s.last_price, s.interval) == (
            f.window_hash,
            f.price,
            f.lower,
            f.upper,
            f.last_price,
            f.interval,
        )
        assert s.model_version == f.model_version == predictor.version
        assert s.actual == actual == published[(symbol, ts)].last_price
        assert s.source == published[(symbol, ts)].source
        assert s.abs_error == abs(actual - f.price)
        assert s.squared_error == (actual - f.price) * (actual - f.price)  # e * e, not x ** 2
        assert s.persistence_abs_error == abs(actual - f.last_price)
        pinball = sum(
            max(q * (actual - y), (q - 1) * (actual - y))
            for q, y in ((0.1, f.lower), (0.5, f.price), (0.9, f.upper))
        )
        assert s.pinball_loss == pytest.approx(pinball / 3, rel=1e-12)
        assert s.hit == (f.lower <= actual <= f.upper)

    # the two instances' metrics: XAU on its own, the other symbols summed
    named = {**named_before, **second.metric_samples("tickcast_scored_total")}
    assert any('symbol="XAU"' in k for k in named) and any('symbol="_other"' in k for k in named)
    assert not any('symbol="XAU.001"' in k for k in named)
    hits = second.metric("tickcast_score_interval_hits_total")
    assert 0 < hits <= second.metric("tickcast_scored_total")

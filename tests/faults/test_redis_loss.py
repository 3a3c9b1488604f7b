"""Redis loses everything while ticks keep arriving: FLUSHALL while the service runs and while it
is stopped, Redis killed and restarted empty under it. The topic is the truth: the windows are
rebuilt from it, and no forecast is lost, changed or (nothing crashed) published twice."""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.harness import gold_feed
from tests.faults.conftest import GUARANTEES, flushall
from tests.faults.support import (
    SIZES,
    Feeder,
    compare,
    drain,
    expected_forecasts,
    feed_now,
    seeded_rng,
    wait_until,
)

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_flushall_while_running_and_while_stopped_loses_nothing(
    deploy, kafka_bootstrap, private_redis, predictor, guarantee
) -> None:  # type: ignore[no-untyped-def]
    rng, seed = seeded_rng()
    d = deploy(kafka_bootstrap, private_redis.url, TICKCAST_PROCESSING__GUARANTEE=guarantee)
    feed = gold_feed(symbols=SIZES.redis_symbols, rows=SIZES.redis_rows)
    cut = len(feed) * 3 // 4
    first = Feeder(d.bootstrap, d.topics["ticks"], feed[:cut], SIZES.redis_rate)

    svc = d.start()
    first.start()
    # Mid-stream, every window past warm-up: flushed at random moments while ticks arrive.
    span = cut / SIZES.redis_rate
    moments = sorted(rng.uniform(0.15 * span, 0.9 * span) for _ in range(SIZES.flushes))
    started = time.monotonic()
    flushed_at = []
    for moment in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        flushall(private_redis)
        flushed_at.append(first.produced)
    positions = first.finish()
    d.wait_caught_up(svc, timeout=120)
    lost_while_running = svc.metric("tickcast_state_losses_total")
    assert d.stop(svc) == 0, svc.tail(30)

    flushall(private_redis)  # while stopped: the next start finds nothing
    again = d.start()
    rest = Feeder(d.bootstrap, d.topics["ticks"], feed[cut:], SIZES.redis_rate)
    rest.start()
    positions += rest.finish()
    d.wait_caught_up(again, timeout=120)
    assert d.stop(again) == 0, again.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    report = (
        f"seed {seed}; {len(feed)} ticks, FLUSHALL at ticks {flushed_at} while running "
        f"(state losses counted {lost_while_running:.0f}) and once while stopped; "
        f"{outcome.summary()}"
    )
    print(report)
    problems = outcome.problems(exactly_once=True)  # nothing crashed: nothing is repeated
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()


def test_redis_killed_and_restarted_empty_loses_nothing(
    deploy, kafka_bootstrap, private_redis, predictor
) -> None:  # type: ignore[no-untyped-def]
    rng, seed = seeded_rng()
    d = deploy(
        kafka_bootstrap,
        private_redis.url,
        TICKCAST_REDIS__SOCKET_TIMEOUT_S="0.5",
        TICKCAST_PROCESSING__REDIS_RETRY_MAX_S="0.5",
    )
    feed = gold_feed(symbols=SIZES.redis_symbols, rows=SIZES.redis_rows)
    feeder = Feeder(d.bootstrap, d.topics["ticks"], feed, SIZES.redis_rate)
    svc = d.start()
    feeder.start()
    wait_until(lambda: feeder.produced > len(feed) // 6, 60, "the feed under way")

    outages = []
    for _ in range(SIZES.redis_restarts):
        # A random moment once the service works again after the previous outage.
        time.sleep(rng.uniform(0.2, 1.5))
        down_for = rng.uniform(0.2, 2.0)
        at = feeder.produced
        private_redis.kill()
        time.sleep(down_for)
        assert svc.proc is not None and svc.proc.poll() is None, svc.tail(30)
        private_redis.start()  # same port, empty: no persistence
        outages.append(f"tick {at}: {down_for:.1f} s")
        published = svc.metric("tickcast_forecasts_total")
        wait_until(
            lambda published=published: svc.metric("tickcast_forecasts_total") > published,
            60,
            "forecasts again after Redis came back",
        )
    positions = feeder.finish()
    d.wait_caught_up(svc, timeout=120)
    assert d.stop(svc) == 0, svc.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    report = f"seed {seed}; {len(feed)} ticks, Redis outages at {outages}; {outcome.summary()}"
    print(report)
    problems = outcome.problems(exactly_once=True)  # nothing crashed: nothing is repeated
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()


def test_redis_lost_again_while_the_windows_are_rebuilt_loses_nothing(
    deploy, kafka_bootstrap, private_redis, predictor
) -> None:  # type: ignore[no-untyped-def]
    """A flapping Redis: it comes back empty, the service starts rebuilding the windows from the
    topic, and Redis dies and comes back empty again in the middle of that rebuild."""
    d = deploy(
        kafka_bootstrap,
        private_redis.url,
        TICKCAST_REDIS__SOCKET_TIMEOUT_S="0.5",
        TICKCAST_PROCESSING__REDIS_RETRY_MAX_S="0.5",
    )
    feed = gold_feed(symbols=SIZES.redis_symbols, rows=SIZES.redis_rows)
    cut = len(feed) // 2
    svc = d.start()
    positions = feed_now(d.bootstrap, d.topics["ticks"], feed[:cut])  # a history to rebuild
    d.wait_caught_up(svc, timeout=60)
    rest = Feeder(d.bootstrap, d.topics["ticks"], feed[cut:], SIZES.redis_rate)
    rest.start()
    wait_until(lambda: rest.produced > 50, 30, "ticks arriving")

    flushall(private_redis)  # the next batch finds the state lost and starts the rebuild
    log_size = svc.log_path.stat().st_size
    wait_until(
        lambda: "rebuilding up to" in svc.log_path.read_text(errors="replace")[log_size:],
        30,
        "the rebuild after FLUSHALL",
        step=0.005,
    )
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # frozen mid-rebuild, then gone
    rebuilt_before_the_stop = (
        "rebuilt windows" in svc.log_path.read_text(errors="replace")[log_size:]
    )
    private_redis.kill()
    time.sleep(1.0)
    private_redis.start()
    positions += rest.finish()
    d.wait_caught_up(svc, timeout=120)
    assert d.stop(svc) == 0, svc.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    report = (
        f"{len(feed)} ticks; FLUSHALL at tick {cut + 50}+, Redis killed during the rebuild "
        f"(rebuild already done before the kill: {rebuilt_before_the_stop}); {outcome.summary()}"
    )
    print(report)
    problems = outcome.problems(exactly_once=True)
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()

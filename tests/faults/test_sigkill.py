"""SIGKILL at random moments while ticks keep arriving: nothing lost, nothing changed.

at-least-once: every expected forecast is there, repeats are bit-identical (apart from `cached`
and `produced_at`), even when Redis is flushed between a kill and the restart (every other kill:
the windows are rebuilt from the topic and the results recomputed). exactly-once: a
read_committed reader sees exactly the crash-free set, each forecast once.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.harness import gold_feed
from tests.faults.conftest import GUARANTEES, flushall
from tests.faults.support import SIZES, Feeder, compare, drain, expected_forecasts, seeded_rng

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_sigkill_at_random_moments_loses_and_changes_nothing(
    deploy, kafka_bootstrap, private_redis, predictor, guarantee
) -> None:  # type: ignore[no-untyped-def]
    rng, seed = seeded_rng()
    exactly_once = guarantee == "exactly-once"
    d = deploy(kafka_bootstrap, private_redis.url, TICKCAST_PROCESSING__GUARANTEE=guarantee)
    feed = gold_feed(symbols=SIZES.kill_symbols, rows=SIZES.kill_rows)
    feeder = Feeder(d.bootstrap, d.topics["ticks"], feed, SIZES.kill_rate)
    feeder.start()

    moments = []
    flushes = 0
    for i in range(SIZES.kills):
        svc = d.start(wait_ready=False)
        if rng.random() < 0.25:  # while it starts: joining the group, recovering, rebuilding
            delay = rng.uniform(0.3, 2.5)
            moment = f"{delay:.2f} s after start"
        else:  # while it works: mid-batch, between produce and commit, in a transaction
            svc.wait_ready(60)
            delay = rng.uniform(0.05, 2.5)
            moment = f"{delay:.2f} s after ready"
        time.sleep(delay)
        assert svc.proc is not None
        assert svc.proc.poll() is None, f"run {i} exited by itself:\n{svc.tail(30)}"
        svc.signal(signal.SIGKILL)
        assert svc.wait(10) == -signal.SIGKILL
        moments.append(f"{moment} (tick {feeder.produced} of {len(feed)})")
        if not exactly_once and i % 2 == 0:
            flushall(private_redis)  # windows and cached results gone before the restart
            flushes += 1

    final = d.start()
    positions = feeder.finish()
    d.wait_caught_up(final, timeout=180)
    assert d.stop(final) == 0, final.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    records = drain(d.bootstrap, d.topics["forecasts"], read_committed=True)
    outcome = compare(records, expected, predictor, d.topics["ticks"])
    report = (
        f"seed {seed}; {len(feed)} ticks, {SIZES.kills} SIGKILLs at {moments}, "
        f"{flushes} FLUSHALLs; {outcome.summary()}"
    )
    print(report)
    problems = outcome.problems(exactly_once=exactly_once)
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()

"""The Kafka broker dies under the service (a private broker: the shared one stays up).

Killed for 10 s and restarted on its data: the service reconnects, recovers fatal producer and
transaction errors in the same process, and every forecast is there afterwards (exactly-once:
exactly once under read_committed). SIGTERM while the broker is gone: the stop is bounded by
processing.shutdown_timeout_s, exit code 3 (undelivered work left uncommitted) or 0, and what
was left undone is done by the next run.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.e2e.harness import gold_feed
from tests.faults.conftest import GUARANTEES
from tests.faults.support import FULL, SIZES, Feeder, compare, drain, expected_forecasts, wait_until

pytestmark = pytest.mark.faults

OUTAGE_S = 10.0
SHUTDOWN_TIMEOUT_S = 6.0
#: process exit after the checkpoint gave up: closing clients, joining threads, interpreter exit
EXIT_MARGIN_S = 3.0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_broker_killed_for_10_s_the_service_stays_and_loses_nothing(
    deploy, private_kafka, private_redis, predictor, guarantee
) -> None:  # type: ignore[no-untyped-def]
    exactly_once = guarantee == "exactly-once"
    d = deploy(private_kafka.bootstrap, private_redis.url, TICKCAST_PROCESSING__GUARANTEE=guarantee)
    feed = gold_feed(symbols=SIZES.broker_symbols, rows=SIZES.broker_rows)
    feeder = Feeder(d.bootstrap, d.topics["ticks"], feed, SIZES.broker_rate)
    svc = d.start()
    feeder.start()
    wait_until(lambda: svc.metric("tickcast_forecasts_total") > 0, 60, "first forecasts")

    at = feeder.produced
    private_kafka.kill()
    down_since = time.monotonic()
    while time.monotonic() - down_since < OUTAGE_S:
        assert svc.proc is not None
        assert svc.proc.poll() is None, f"exited while the broker was down:\n{svc.tail(40)}"
        time.sleep(0.2)
    restart_s = private_kafka.start()
    positions = feeder.finish()
    d.wait_caught_up(svc, timeout=180)
    assert svc.proc is not None and svc.proc.poll() is None
    assert d.stop(svc) == 0, svc.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    report = (
        f"{guarantee}: {len(feed)} ticks, broker killed at tick {at} for {OUTAGE_S:.0f} s "
        f"(+{restart_s:.1f} s to restart); {outcome.summary()}"
    )
    print(report)
    problems = outcome.problems(exactly_once=exactly_once)
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_sigterm_3_s_after_the_broker_died_is_bounded(
    deploy, private_kafka, private_redis, predictor, guarantee
) -> None:  # type: ignore[no-untyped-def]
    exactly_once = guarantee == "exactly-once"
    d = deploy(
        private_kafka.bootstrap,
        private_redis.url,
        TICKCAST_PROCESSING__GUARANTEE=guarantee,
        TICKCAST_PROCESSING__SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
    )
    feed = gold_feed(symbols=SIZES.broker_symbols, rows=SIZES.broker_rows)
    feeder = Feeder(d.bootstrap, d.topics["ticks"], feed, SIZES.broker_rate)
    svc = d.start()
    feeder.start()
    wait_until(lambda: svc.metric("tickcast_forecasts_total") > 0, 60, "first forecasts")

    private_kafka.kill()
    time.sleep(3.0)
    assert svc.proc is not None and svc.proc.poll() is None, svc.tail(30)
    svc.signal(signal.SIGTERM)
    stopped = time.monotonic()
    bound = SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S
    try:
        code = svc.wait(bound)
    except subprocess.TimeoutExpired:
        stacks = svc.stacks()
        try:
            # How long it would have taken: up to the client's message timeout (full size only).
            code = svc.wait(330 if FULL else 20)
        except subprocess.TimeoutExpired:
            svc.kill_if_running()
            code = None
        raise AssertionError(
            f"{guarantee}: SIGTERM with the broker gone: not exited within "
            f"shutdown_timeout_s {SHUTDOWN_TIMEOUT_S:.0f} s + {EXIT_MARGIN_S:.0f} s; exited after "
            f"{time.monotonic() - stopped:.0f} s with code {code}:\n{svc.tail(30)}\n"
            f"stacks when the bound passed:\n{stacks}"
        ) from None
    took = time.monotonic() - stopped
    assert code in (0, 3), f"exit code {code} after {took:.1f} s:\n{svc.tail(30)}"

    # What was left undone is redone by the next run, once the broker is back.
    private_kafka.start()
    positions = feeder.finish()
    again = d.start()
    d.wait_caught_up(again, timeout=180)
    assert d.stop(again) == 0, again.tail(30)

    expected = expected_forecasts(feed, positions, predictor)
    outcome = compare(
        drain(d.bootstrap, d.topics["forecasts"]), expected, predictor, d.topics["ticks"]
    )
    report = (
        f"{guarantee}: SIGTERM 3 s after the broker died: exit {code} after {took:.1f} s "
        f"(bound {bound:.0f} s); {len(feed)} ticks; {outcome.summary()}"
    )
    print(report)
    problems = outcome.problems(exactly_once=exactly_once)
    assert not problems, f"{report}\n" + "\n".join(problems) + "\n" + d.log_excerpt()

"""A real Prometheus scraping the real `tickcast run`, as an operator runs them (issue 10).

While the service runs, every query of the shipped dashboard returns data; once the service is
stopped while ticks keep arriving, the "no instance up" alert (TickcastDown, shipped rules with
`for:` shortened) goes pending and fires. Prometheus is Debian's package (`make test` installs it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from tests.e2e.harness import Service, gold_feed
from tests.e2e.prometheus import Prometheus
from tests.unit.test_dashboard import dashboard_queries

pytestmark = pytest.mark.e2e


def _feed_until(bootstrap: str, topic: str, stop: threading.Event, rate: float = 200.0) -> None:
    """Ticks keep coming (new windows first, then the same ticks again, late to the service)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    feed = gold_feed(symbols=4, rows=400)
    sent = 0
    while not stop.is_set():
        key, value = feed[sent % len(feed)]
        producer.produce(topic, value=value, key=key)
        sent += 1
        producer.poll(0)
        time.sleep(1 / rate)
    producer.flush(10)


@pytest.fixture
def feeding(setup, kafka_bootstrap: str) -> Iterator[None]:  # type: ignore[no-untyped-def]
    stop = threading.Event()
    feeder = threading.Thread(
        target=_feed_until, args=(kafka_bootstrap, setup.topics["ticks"], stop), daemon=True
    )
    feeder.start()
    yield
    stop.set()
    feeder.join(30)


def _wait_for(check, timeout: float, every: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def test_dashboard_has_data_and_no_instance_alert_fires_after_stop(
    setup,  # type: ignore[no-untyped-def]
    feeding: None,
    tmp_path: Path,
) -> None:
    svc: Service = setup().start()
    prometheus = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{svc.port}"], rule_for="5s")
    prometheus.start()
    try:
        # Every dashboard query returns data while the service runs (rates need two scrapes
        # and a batch of each kind; give it a while).
        queries = dashboard_queries()

        def empty() -> list[str]:
            return [
                f"{title} / {legend}"
                for title, legend, expr in queries
                if not prometheus.query(expr)
            ]

        all_have_data = _wait_for(lambda: not empty(), timeout=60, every=2)
        assert all_have_data, f"dashboard queries without data: {empty()}"
        assert prometheus.alert_states("TickcastDown") == []
        assert prometheus.query('up{job="tickcast"} == 1')

        # Stop the only instance while ticks keep arriving.
        assert svc.stop() == 0
        stopped = time.monotonic()
        states = _wait_for(
            lambda: "firing" in prometheus.alert_states("TickcastDown"), timeout=30, every=0.5
        )
        assert states, (
            f"TickcastDown not firing 30 s after the stop: {prometheus.alert_states('TickcastDown')}"
        )
        # `for: 5s` at 1 s evaluations: firing after the scrape that failed plus the `for`.
        assert time.monotonic() - stopped < 30
        assert prometheus.query('absent(up{job="tickcast"} == 1)')
    finally:
        prometheus.stop()

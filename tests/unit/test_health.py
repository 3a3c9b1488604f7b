"""/healthz is the loop's heartbeat and /readyz names what is missing; librdkafka's errors and
statistics become readiness and metrics (stream.kafka.ClientEvents)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from stream.kafka import ClientEvents
from stream.metrics import Health, Metrics, serve


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_healthz_fails_when_the_loop_stops_beating() -> None:
    health = Health(model_loaded=True, redis_ok=True, assigned=1, stall_after_s=0.3)
    server = serve(Metrics(CollectorRegistry()), health, "127.0.0.1", 0)
    port = server.server_address[1]
    try:
        health.beat()
        assert _get(port, "/healthz") == (200, "ok\n")
        time.sleep(0.5)  # the loop is stuck: no beat
        code, body = _get(port, "/healthz")
        assert code == 503 and body.startswith("processing loop stalled for")
        health.beat()
        assert _get(port, "/healthz")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_readyz_names_the_dependency_and_its_address() -> None:
    health = Health(model_loaded=True, redis_ok=False, assigned=0, redis_address="redis://r:6379/0")
    health.kafka_down = "127.0.0.1:9092 (kafka.bootstrap_servers): 1/1 brokers are down"
    reasons = health.not_ready_reasons()
    assert reasons == [
        "kafka unreachable: 127.0.0.1:9092 (kafka.bootstrap_servers): 1/1 brokers are down",
        "redis unreachable at redis://r:6379/0",
        "no partitions assigned",
    ]


def test_all_brokers_down_then_a_broker_up_in_the_statistics() -> None:
    downs: list[str] = []
    ups: list[bool] = []
    stats: list[tuple[str, dict[str, float], int]] = []
    codes: list[str] = []
    events = ClientEvents(
        "127.0.0.1:9092",
        on_error=codes.append,
        on_down=downs.append,
        on_up=lambda: ups.append(True),
        on_stats=lambda c, rtt, q: stats.append((c, rtt, q)),
    )
    conf = events.config("consumer")
    assert conf["client.id"] == "tickcast-consumer" and conf["logger"].name == "librdkafka"
    events._error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert codes == ["_ALL_BROKERS_DOWN"]
    assert downs == ["127.0.0.1:9092 (kafka.bootstrap_servers): 1/1 brokers are down"]
    report = {
        "client_id": "tickcast-consumer",
        "msg_cnt": 7,
        "brokers": {
            "GroupCoordinator": {"nodeid": -1, "state": "UP"},
            "127.0.0.1:9092/1": {
                "nodeid": 1,
                "nodename": "127.0.0.1:9092",
                "state": "UP",
                "rtt": {"avg": 1500, "cnt": 3},
            },
        },
    }
    events._stats(json.dumps(report))
    assert ups == [True]
    assert stats == [("tickcast-consumer", {"127.0.0.1:9092": 0.0015}, 7)]
    events._stats("not json")  # an unreadable report changes nothing
    assert len(stats) == 1

"""Real Kafka and Redis for the suite, picked in this order:

1. `TICKCAST_KAFKA__BOOTSTRAP_SERVERS` / `TICKCAST_REDIS__URL` when set (the service's own names,
   so a `tickcast run` started by a test reads the same ones);
2. testcontainers, when a Docker engine answers (Kafka in KRaft mode with one-node transaction logs);
3. the local broker and Redis of `tools.localinfra` (started if not running; `make test` starts them).

A missing service fails the tests that need it; nothing is skipped. Each test gets its own topics and
its own Redis key prefix, so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docker_answers() -> bool:
    # Without DOCKER_HOST the client tries the default socket; skip it (and the socket it would
    # leak on a failed connect) when that file does not exist.
    if "DOCKER_HOST" not in os.environ and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


#: Names the suite read before it took the service's; set alone, they would be ignored silently.
_OLD_NAMES = {
    "KAFKA_BOOTSTRAP_SERVERS": "TICKCAST_KAFKA__BOOTSTRAP_SERVERS",
    "REDIS_URL": "TICKCAST_REDIS__URL",
}


@pytest.fixture(scope="session")
def _services() -> Iterator[dict[str, str]]:
    for old, new in _OLD_NAMES.items():
        if old in os.environ and new not in os.environ:
            pytest.exit(f"{old} is no longer read by the tests: set {new} instead", returncode=4)
    kafka = os.environ.get("TICKCAST_KAFKA__BOOTSTRAP_SERVERS")
    redis_url = os.environ.get("TICKCAST_REDIS__URL")
    containers: list[object] = []
    if (kafka is None or redis_url is None) and _docker_answers():
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.redis import RedisContainer

        if kafka is None:
            kc = (
                KafkaContainer("confluentinc/cp-kafka:7.7.1")
                .with_kraft()
                .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
                .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            )
            kc.start()
            containers.append(kc)
            kafka = kc.get_bootstrap_server()
        if redis_url is None:
            rc = RedisContainer("redis:7.2")
            rc.start()
            containers.append(rc)
            redis_url = f"redis://{rc.get_container_host_ip()}:{rc.get_exposed_port(6379)}/0"
    if kafka is None or redis_url is None:
        from tools import localinfra

        layout = localinfra.Layout(root=Path(ROOT) / ".local")
        local_kafka, local_redis = localinfra.up(layout=layout)
        kafka = kafka or local_kafka
        redis_url = redis_url or local_redis
    yield {"kafka": kafka, "redis": redis_url}
    for c in containers:
        c.stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def kafka_bootstrap(_services: dict[str, str]) -> str:
    return _services["kafka"]


@pytest.fixture(scope="session")
def redis_url(_services: dict[str, str]) -> str:
    return _services["redis"]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=False)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def redis_commands_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command the hot-path Redis client (stream.redisio) sends from now on, by name: one
    entry per round trip. Clear it after a warm-up call to count from there."""
    from stream.redisio import Commands

    sent: list[str] = []
    call = Commands._call

    def counting(self: Commands, *args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(Commands, "_call", counting)
    return sent


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A prefix no other test uses; its keys are deleted afterwards."""
    import redis

    prefix = f"test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Creates topics with unique names; deletes them after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    made: list[str] = []

    def make(stem: str = "t", partitions: int = 1) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        futures[name].result(timeout=30)
        made.append(name)
        return name

    yield make
    if made:
        for fut in admin.delete_topics(made, operation_timeout=10).values():
            # A topic already gone must not fail the test that made it.
            with contextlib.suppress(Exception):
                fut.result(timeout=15)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real three-primary Redis Cluster on loopback (Debian's redis-server and redis-cli), for
    the session; its seed node's URL."""
    import shutil
    import socket
    import subprocess
    import time

    import redis

    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli are needed (`tickcast services up`)"
    root = tmp_path_factory.mktemp("redis-cluster")

    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    # Each node also listens on its port + 10000 (the cluster bus), which must be a port too.
    ports: list[int] = []
    candidate = 30000 + uuid.uuid4().int % 20000
    while len(ports) < 3:
        candidate += 1
        if free(candidate) and free(candidate + 10000):
            ports.append(candidate)
    nodes = []
    for port in ports:
        folder = root / str(port)
        folder.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
        args += ["--cluster-config-file", "nodes.conf", "--dir", str(folder)]
        args += ["--save", "", "--appendonly", "no"]
        nodes.append(
            subprocess.Popen(
                [server, *args], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    try:
        for port in ports:
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis(port=port).ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, f"cluster node {port} did not start"
                    time.sleep(0.05)
        addresses = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 20
        while any(
            b"cluster_state:ok" not in redis.Redis(port=p).execute_command("CLUSTER", "INFO")
            for p in ports
        ):
            assert time.monotonic() < deadline, "the Redis Cluster did not come up"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(10)


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[str]:
    """A real Schema Registry's Confluent-compatible URL (Apicurio Registry, started by the
    project's tooling once per session; stopped afterwards if this session started it). Never
    skipped: if it cannot start, the tests that need it fail with the tooling's reason."""
    import warnings

    from tools import localinfra

    already = localinfra.registry_url()
    with warnings.catch_warnings():
        # start_registry lets go of its Popen while the registry runs (stopped by pid later).
        warnings.simplefilter("ignore", ResourceWarning)
        url = localinfra.start_registry()
    yield url
    if already is None:
        localinfra.stop_registry()

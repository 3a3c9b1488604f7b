"""Fixtures of the fault suite: a deployment (topics, group, Redis, restartable `tickcast run`
processes of one instance), a private Redis to flush and kill, and a private Kafka broker to kill
(the shared ones stay up for the other tests and for other users of this machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka.admin import AdminClient, NewTopic

from stream import config
from stream.predictor import load_predictor
from tests.e2e.harness import ROOT, Service, W, group_lag
from tests.redis_process import RedisProcess
from tools import localinfra

GUARANTEES = ["at-least-once", "exactly-once"]


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    """The model the services load: same config file and TICKCAST_MODEL__* environment."""
    return load_predictor(config.load().model, W)


# ---------------------------------------------------------------- Redis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, without persistence: FLUSHALL and kills touch no one
    else."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisProcess(folder).start()
    yield server
    server.kill()


def flushall(server: RedisProcess) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.flushall()
    finally:
        client.close()


# ---------------------------------------------------------------- Kafka


class PrivateKafka:
    """A one-node KRaft broker of the suite's own (tools/localinfra.start_kafka in a folder of its
    own, on free ports), to kill with SIGKILL and restart on the same data. Its classpath is the
    main checkout's (a symlink), so nothing is downloaded again."""

    def __init__(self, root: Path) -> None:
        main = localinfra.Layout(Path(os.environ.get("TICKCAST_LOCAL_DIR", ROOT / ".local")))
        localinfra.ensure_kafka_jars(main)  # cached: returns at once when the marker is there
        self.layout = localinfra.Layout(root)
        (root / "kafka").mkdir(parents=True, exist_ok=True)
        if not self.layout.libs.exists():
            self.layout.libs.symlink_to(main.libs.resolve(), target_is_directory=True)
        kafka = localinfra.free_port()
        controller = localinfra.free_port()
        while controller == kafka:
            controller = localinfra.free_port()
        self.ports = localinfra.Ports(kafka=kafka, controller=controller, redis=0)
        self.kills = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.layout.pidfile("kafka").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if localinfra._alive(pid) else None

    def start(self) -> float:
        """Start (or restart, on the same data) and wait until it answers; seconds taken."""
        started = time.monotonic()
        with warnings.catch_warnings():
            # start_kafka lets go of its Popen while the broker runs (it is stopped by pid, as
            # `make down` does): its ResourceWarning says so, and is no news here.
            warnings.simplefilter("ignore", ResourceWarning)
            localinfra.start_kafka(self.layout, self.ports, ready_timeout=120)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as when the machine's broker process dies."""
        pid = self.pid
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # it is our child (start_kafka's Popen): reap it
        while localinfra._alive(pid):
            time.sleep(0.05)
        self.kills += 1

    @property
    def log(self) -> Path:
        return self.layout.logs / "kafka.log"


@pytest.fixture(scope="session")
def _private_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    broker = PrivateKafka(tmp_path_factory.mktemp("private-kafka"))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def private_kafka(_private_kafka: PrivateKafka) -> PrivateKafka:
    """The suite's private broker, running (a test before may have left it killed)."""
    if _private_kafka.pid is None:
        _private_kafka.start()
    return _private_kafka


def create_topics(bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=parts, replication_factor=1, config=conf)
            for name, (parts, conf) in topics.items()
        ]
    )
    for fut in futures.values():
        fut.result(timeout=30)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    for fut in admin.delete_topics(names, operation_timeout=10).values():
        with contextlib.suppress(Exception):
            fut.result(timeout=15)


# ---------------------------------------------------------------- the deployment


@dataclass
class Deployment:
    """One tickcast instance (one group, one transactional id) on its own topics, started,
    killed and restarted as many times as a test likes: every start is a new `tickcast run`
    process with a log of its own."""

    bootstrap: str
    redis_url: str
    topics: dict[str, str]
    partitions: int
    group: str
    instance: str
    key_prefix: str
    logs: Path
    env: dict[str, str]
    runs: list[Service] = field(default_factory=list)

    def service(self, **overrides: str) -> Service:
        env = {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "TICKCAST_KAFKA__GROUP_ID": self.group,
            "TICKCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "TICKCAST_KAFKA__INSTANCE_ID": self.instance,
            "TICKCAST_TOPICS__TICKS": self.topics["ticks"],
            "TICKCAST_TOPICS__FORECASTS": self.topics["forecasts"],
            "TICKCAST_TOPICS__DEAD_LETTER": self.topics["dlq"],
            "TICKCAST_REDIS__URL": self.redis_url,
            "TICKCAST_REDIS__KEY_PREFIX": self.key_prefix,
            **self.env,
            **overrides,
        }
        svc = Service(self.logs / f"run-{len(self.runs)}.log", env)
        self.runs.append(svc)
        return svc

    def start(self, wait_ready: bool = True, **overrides: str) -> Service:
        return self.service(**overrides).start(wait_ready=wait_ready)

    def lag(self) -> int:
        """Ticks not yet committed by the group, from Kafka itself."""
        return sum(
            group_lag(self.bootstrap, self.group, self.topics["ticks"], self.partitions).values()
        )

    def wait_caught_up(self, svc: Service, timeout: float) -> float:
        """Until the group has committed every tick; the service must stay up meanwhile."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            assert svc.proc is not None
            if svc.proc.poll() is not None:
                raise AssertionError(
                    f"tickcast run exited with code {svc.proc.returncode} before it caught up:\n"
                    f"{svc.tail(30)}"
                )
            lag = self.lag()
            if lag == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{lag} ticks still uncommitted after {timeout:.0f} s:\n{svc.tail(30)}"
                )
            time.sleep(0.5)

    def stop(self, svc: Service, timeout: float = 20.0) -> int:
        """SIGTERM; the exit code (AssertionError if it does not exit within `timeout`)."""
        svc.signal(signal.SIGTERM)
        try:
            return svc.wait(timeout)
        except Exception:
            svc.kill_if_running()
            raise AssertionError(
                f"tickcast run did not exit within {timeout:.0f} s of SIGTERM:\n{svc.tail(30)}"
            ) from None

    def log_excerpt(
        self, pattern: tuple[str, ...] = ("ERROR", "Traceback", "WARNING"), n: int = 12
    ) -> str:
        """The lines of every run's log that match, run by run (for failure messages)."""
        out = []
        for i, svc in enumerate(self.runs):
            try:
                lines = svc.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            hits = [line for line in lines if any(p in line for p in pattern)]
            if hits:
                out.append(f"--- run {i} ({svc.log_path}):")
                out.extend(line[:300] for line in hits[:n])
        return "\n".join(out)


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """deploy(bootstrap, redis_url, partitions=4, ticks_config={}, **env) -> a Deployment on new
    topics; its services are killed and its topics deleted afterwards."""
    made: list[Deployment] = []

    def make(
        bootstrap: str,
        redis_url: str,
        partitions: int = 4,
        ticks_config: dict[str, str] | None = None,
        **env: Any,
    ) -> Deployment:
        unique = uuid.uuid4().hex[:10]
        topics = {
            "ticks": f"ticks-{unique}",
            "forecasts": f"forecasts-{unique}",
            "dlq": f"dlq-{unique}",
        }
        create_topics(
            bootstrap,
            {
                topics["ticks"]: (partitions, ticks_config or {}),
                topics["forecasts"]: (partitions, {}),
                topics["dlq"]: (1, {}),
            },
        )
        logs = tmp_path / f"deployment-{len(made)}"
        logs.mkdir()
        d = Deployment(
            bootstrap=bootstrap,
            redis_url=redis_url,
            topics=topics,
            partitions=partitions,
            group=f"g-{unique}",
            instance=f"i-{unique}",
            key_prefix=f"fault-{unique}",
            logs=logs,
            env={k: str(v) for k, v in env.items()},
        )
        made.append(d)
        return d

    yield make
    for d in made:
        for svc in d.runs:
            svc.kill_if_running()
        delete_topics(d.bootstrap, list(d.topics.values()))

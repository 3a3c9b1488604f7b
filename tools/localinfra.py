"""A real Apache Kafka broker and a Redis server on loopback, without Docker.

The broker comes from Maven Central: `org.apache.kafka:kafka_2.13` and its runtime dependencies, plus
the log4j binding the published POM leaves out, are resolved with Maven into `<state>/kafka/libs`.
KRaft storage is formatted once; one process is broker and controller. Redis is Debian's
`redis-server`, installed with apt-get when missing and running as root.

Everything lives under the state folder (`TICKCAST_LOCAL_DIR`, default `./.local`):

    .local/kafka/libs/      broker classpath (cached; ~45 MB)
    .local/kafka/data/      KRaft log dirs
    .local/redis/           Redis working dir (no persistence: it is a cache of the topic)
    .local/logs/            kafka.log, redis.log, maven.log
    .local/run/             pid files of what `up` started, so `down` stops only those
    .local/registry/        Apicurio Registry, unpacked by tools/registry/pom.xml (cached; ~170 MB)

`tickcast services up|down|status`, or `make up|down|status`. The Schema Registry (Apicurio's
Confluent-compatible API, Java 21+) only on demand: `start_registry()` returns its URL,
`tickcast services registry up|down|status`; `down` stops it too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from stream.errors import LocalInfraError

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tickcast.local</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <!-- Kafka 4.1 logs through slf4j-api 1.7: the SLF4J 1.x binding of log4j2. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


@dataclass(frozen=True)
class Ports:
    kafka: int = 9092
    controller: int = 9093
    redis: int = 6379

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            kafka=int(os.environ.get("TICKCAST_LOCAL_KAFKA_PORT", "9092")),
            controller=int(os.environ.get("TICKCAST_LOCAL_CONTROLLER_PORT", "9093")),
            redis=int(os.environ.get("TICKCAST_LOCAL_REDIS_PORT", "6379")),
        )


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_env(cls) -> Layout:
        return cls(Path(os.environ.get("TICKCAST_LOCAL_DIR", ".local")).resolve())

    @property
    def libs(self) -> Path:
        return self.root / "kafka" / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.root / "kafka" / "data"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"


def _say(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- Kafka


def ensure_kafka_jars(layout: Layout) -> float:
    """Resolve the broker classpath once; returns seconds spent (0 when cached)."""
    marker = layout.libs / f".kafka-{KAFKA_VERSION}"
    if marker.exists():
        return 0.0
    if shutil.which("java") is None:
        raise LocalInfraError(
            "Java is not installed: the local Kafka broker needs Java 17 or newer "
            "(Debian: apt-get install openjdk-17-jre-headless), or set "
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS to a broker you already run"
        )
    if shutil.which("mvn") is None:
        raise LocalInfraError(
            "Maven (mvn) is not installed: it resolves the Kafka broker jars "
            "(Debian: apt-get install maven), or set TICKCAST_KAFKA__BOOTSTRAP_SERVERS"
        )
    layout.libs.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    pom = layout.root / "kafka" / "pom.xml"
    pom.write_text(POM)
    log = layout.logs / "maven.log"
    _say(f"resolving Apache Kafka {KAFKA_VERSION} broker jars with Maven (log: {log})")
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(pom),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={layout.libs}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
        raise LocalInfraError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{KAFKA_VERSION} "
            f"(exit {proc.returncode}; full log {log}): {tail}"
        )
    elapsed = time.monotonic() - started
    size = sum(p.stat().st_size for p in layout.libs.glob("*.jar")) / 1e6
    marker.write_text(f"{size:.1f} MB in {elapsed:.1f} s\n")
    _say(f"broker jars ready: {size:.1f} MB in {elapsed:.1f} s")
    return elapsed


def _server_properties(layout: Layout, ports: Ports) -> str:
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ports.controller}",
            f"listeners=PLAINTEXT://127.0.0.1:{ports.kafka},CONTROLLER://127.0.0.1:{ports.controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{ports.kafka}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={layout.kafka_data}",
            # One node: every replication default above 1 would leave groups and transactions stuck.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            # Fast first group join and first transaction.
            "offsets.topic.num.partitions=1",
            "transaction.state.log.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            # The cleaner's dedupe buffer defaults to 128 MiB of heap.
            "log.cleaner.dedupe.buffer.size=16777216",
            "num.network.threads=2",
            "num.io.threads=2",
            "num.partitions=1",
            "auto.create.topics.enable=true",
            "",
        ]
    )


def _java(layout: Layout, *args: str, heap: str = "-Xmx512m") -> list[str]:
    return [
        "java",
        "-Xms128m",
        heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={layout.logs}",
        f"-Dlog4j2.configurationFile={layout.root / 'kafka' / 'log4j2.properties'}",
        "-cp",
        f"{layout.libs}/*",
        *args,
    ]


def _kafka_answers(bootstrap: str, timeout: float) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 1000})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return True


def start_kafka(layout: Layout, ports: Ports, ready_timeout: float = 90.0) -> None:
    pidfile = layout.pidfile("kafka")
    bootstrap = f"127.0.0.1:{ports.kafka}"
    if _read_pid(pidfile) is not None and _kafka_answers(bootstrap, 5.0):
        _say(f"kafka already running on {bootstrap} (pid {_read_pid(pidfile)})")
        return
    for port in (ports.kafka, ports.controller):
        if port_open(port):
            raise LocalInfraError(
                f"port {port} on 127.0.0.1 is already in use by another program, so the local "
                f"Kafka broker cannot start there; free it, pick other ports with "
                f"TICKCAST_LOCAL_KAFKA_PORT / TICKCAST_LOCAL_CONTROLLER_PORT, or point "
                f"TICKCAST_KAFKA__BOOTSTRAP_SERVERS at the broker you already run"
            )
    ensure_kafka_jars(layout)
    (layout.root / "kafka").mkdir(parents=True, exist_ok=True)
    layout.kafka_data.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    props = layout.root / "kafka" / "server.properties"
    props.write_text(_server_properties(layout, ports))
    (layout.root / "kafka" / "log4j2.properties").write_text(LOG4J2)
    log = layout.logs / "kafka.log"

    if not (layout.kafka_data / "meta.properties").exists():
        # KRaft cluster id: 16 random bytes, unpadded base64url, must not start with '-'.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        with log.open("a") as out:
            fmt = subprocess.run(
                _java(
                    layout,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--ignore-formatted",
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if fmt.returncode != 0:
            raise LocalInfraError(
                f"formatting KRaft storage failed (exit {fmt.returncode}); see {log}"
            )

    started = time.monotonic()
    with log.open("a") as out:
        proc = subprocess.Popen(
            _java(
                layout,
                # GC pauses stop the broker: logged so a latency spike can be matched to one.
                f"-Xlog:gc:file={layout.logs / 'kafka-gc.log'}:time,uptime:filecount=2,filesize=10m",
                "kafka.Kafka",
                str(props),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives `make up` returning; `down` signals it by pid
        )
    pidfile.write_text(str(proc.pid))
    deadline = started + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pidfile.unlink(missing_ok=True)
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
            raise LocalInfraError(
                f"the Kafka broker exited with code {proc.returncode}: {tail} (log {log})"
            )
        if port_open(ports.kafka) and _kafka_answers(bootstrap, 2.0):
            elapsed = time.monotonic() - started
            rss = _rss_mb(proc.pid)
            _say(
                f"kafka ready on {bootstrap} in {elapsed:.1f} s "
                f"(pid {proc.pid}, RSS {rss:.0f} MB, log {log})"
            )
            return
        time.sleep(0.25)
    raise LocalInfraError(
        f"the Kafka broker did not answer on {bootstrap} within {ready_timeout:.0f} s; see {log}"
    )


# ---------------------------------------------------------------- OS packages (apt-get)


def _ensure_debian_package(binary: str, package: str, otherwise: str) -> str:
    """The path of `binary`, installing Debian's `package` with apt-get when it is missing and we
    run as root; else a LocalInfraError saying what to install (`otherwise`: the alternative)."""
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _say(f"{binary} is missing; installing Debian's {package} package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        ):
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise LocalInfraError(
                    f"`{' '.join(cmd)}` failed (exit {res.returncode}): {res.stderr.strip()[-300:]}"
                )
        path = shutil.which(binary)
        if path:
            return path
    raise LocalInfraError(
        f"{binary} is not installed. Install it (Debian/Ubuntu: sudo apt-get install {package})"
        f"{otherwise}"
    )


def ensure_redis_server() -> str:
    return _ensure_debian_package(
        "redis-server",
        "redis-server",
        " or set TICKCAST_REDIS__URL to a Redis server you already run",
    )


def ensure_prometheus() -> tuple[str, str]:
    """promtool (alert rule unit tests, config checks) and the Prometheus server (the end-to-end
    test that scrapes a running service): both from Debian's `prometheus` package."""
    promtool = _ensure_debian_package("promtool", "prometheus", "")
    return promtool, _ensure_debian_package("prometheus", "prometheus", "")


def ensure_amtool() -> str:
    """amtool (`amtool check-config` on the compose stack's Alertmanager configuration), from
    Debian's `prometheus-alertmanager` package: the release the compose file pins."""
    return _ensure_debian_package("amtool", "prometheus-alertmanager", "")


def ensure_wrk() -> str:
    """wrk, the HTTP load generator of `tickcast bench http`, from Debian's package."""
    return _ensure_debian_package("wrk", "wrk", "")


# ---------------------------------------------------------------- Redis


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(layout: Layout, ports: Ports, ready_timeout: float = 15.0) -> None:
    pidfile = layout.pidfile("redis")
    if _read_pid(pidfile) is not None and _redis_answers(ports.redis):
        _say(f"redis already running on 127.0.0.1:{ports.redis} (pid {_read_pid(pidfile)})")
        return
    if port_open(ports.redis):
        raise LocalInfraError(
            f"port {ports.redis} on 127.0.0.1 is already in use by another program, so the local "
            f"Redis cannot start there; free it, pick another with TICKCAST_LOCAL_REDIS_PORT, or "
            f"point TICKCAST_REDIS__URL at the Redis you already run"
        )
    server = ensure_redis_server()
    for d in (layout.redis_dir, layout.logs, layout.run):
        d.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "redis.log"
    with log.open("a") as out:
        proc = subprocess.Popen(
            [
                server,
                "--bind",
                "127.0.0.1",
                "--port",
                str(ports.redis),
                "--dir",
                str(layout.redis_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pidfile.unlink(missing_ok=True)
            raise LocalInfraError(f"redis-server exited with code {proc.returncode}; see {log}")
        if _redis_answers(ports.redis):
            _say(f"redis ready on 127.0.0.1:{ports.redis} (pid {proc.pid}, log {log})")
            return
        time.sleep(0.1)
    raise LocalInfraError(f"redis-server did not answer on 127.0.0.1:{ports.redis}; see {log}")


# ---------------------------------------------------------------- Schema Registry (Apicurio)
#
# Apicurio Registry (Apache-2.0) with its Confluent-compatible API: confluent-kafka's
# SchemaRegistryClient and its Avro serializers talk to `<base>/apis/ccompat/v7`. Its built Quarkus
# application is on Maven Central (io.apicurio:apicurio-registry-app:<v>:tar.gz:all);
# tools/registry/pom.xml unpacks it into `<state>/registry/app` once. Storage is H2 in memory:
# each start begins empty. It needs Java 21 or newer (Java 21 bytecode), looked for beside the
# Java 17 that runs Kafka.

APICURIO_VERSION = "3.3.3"  # keep in step with apicurio.version in tools/registry/pom.xml
REGISTRY_POM = Path(__file__).resolve().parent / "registry" / "pom.xml"
CCOMPAT_PATH = "/apis/ccompat/v7"
REGISTRY_MIN_JAVA = 21


def _java_major(java: str) -> int | None:
    try:
        res = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in res.stderr.splitlines():
        if " version " in line and '"' in line:
            ver = line.split('"')[1]
            head = ver.split(".")[1] if ver.startswith("1.") else ver.split(".")[0]
            head = head.split("-")[0].split("+")[0]
            return int(head) if head.isdigit() else None
    return None


def find_java(minimum: int = REGISTRY_MIN_JAVA) -> str:
    """A `java` of version `minimum` or newer: TICKCAST_REGISTRY_JAVA, $JAVA_HOME, PATH, then the
    JDKs under /usr/lib/jvm (newest first)."""
    candidates: list[str] = []
    if os.environ.get("TICKCAST_REGISTRY_JAVA"):
        candidates.append(os.environ["TICKCAST_REGISTRY_JAVA"])
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    candidates += sorted((str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java")), reverse=True)
    seen: list[str] = []
    for java in dict.fromkeys(candidates):
        major = _java_major(java)
        if major is not None and major >= minimum:
            return java
        seen.append(f"{java} ({major or 'unusable'})")
    raise LocalInfraError(
        f"the Schema Registry (Apicurio Registry {APICURIO_VERSION}) needs Java {minimum} or newer; "
        f"found only: {', '.join(seen) or 'no java'}. Point TICKCAST_REGISTRY_JAVA at a java "
        f"binary of version {minimum}+"
    )


def _registry_dir(layout: Layout) -> Path:
    return layout.root / "registry"


def ensure_registry_app(layout: Layout) -> float:
    """Unpack the Apicurio Registry application once; returns seconds spent (0 when cached)."""
    app = _registry_dir(layout) / "app"
    marker = app / f".apicurio-{APICURIO_VERSION}"
    if marker.exists() and (app / "quarkus-run.jar").exists():
        return 0.0
    if shutil.which("mvn") is None:
        raise LocalInfraError(
            "Maven (mvn) is not installed: it fetches the Apicurio Registry application "
            "(Debian: apt-get install maven)"
        )
    layout.logs.mkdir(parents=True, exist_ok=True)
    log = layout.logs / "registry-maven.log"
    _say(f"fetching Apicurio Registry {APICURIO_VERSION} with Maven (log: {log})")
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(REGISTRY_POM),
                "package",
                f"-Dregistry.app={app}",
                f"-Dregistry.build={_registry_dir(layout) / 'target'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0 or not (app / "quarkus-run.jar").exists():
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])[-400:]
        raise LocalInfraError(
            f"Maven could not fetch io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all "
            f"(exit {proc.returncode}; full log {log}): {tail}"
        )
    elapsed = time.monotonic() - started
    marker.write_text(f"{elapsed:.1f} s\n")
    _say(f"Apicurio Registry ready to run in {elapsed:.1f} s")
    return elapsed


def _registry_answers(url: str, timeout: float = 2.0) -> bool:
    """GET <url>/subjects answers 200: storage and the Confluent-compatible API are up."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", f"{parts.path}/subjects")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def registry_url(layout: Layout | None = None) -> str | None:
    """The Confluent-compatible URL of the registry `start_registry` started, if it answers."""
    layout = layout or Layout.from_env()
    if _read_pid(layout.pidfile("registry")) is None:
        return None
    try:
        port = int((layout.run / "registry.port").read_text().strip())
    except (OSError, ValueError):
        return None
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    return url if _registry_answers(url) else None


def start_registry(
    layout: Layout | None = None, port: int | None = None, ready_timeout: float = 120.0
) -> str:
    """Start Apicurio Registry on loopback (idempotent) and return its Confluent-compatible URL,
    `http://127.0.0.1:<port>/apis/ccompat/v7`, for SchemaRegistryClient({"url": ...}).

    The port: `port`, else TICKCAST_LOCAL_REGISTRY_PORT, else a free one. Logs go to
    `<state>/logs/registry.log`; `stop_registry` (or `tickcast services down`) stops it.
    Concurrent callers (several test runs on one state folder) take turns on a lock file, so the
    later ones get the registry the first one started."""
    layout = layout or Layout.from_env()
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "registry.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        running_url = registry_url(layout)
        if running_url is not None:
            _say(f"registry already running at {running_url}")
            return running_url
        if _read_pid(layout.pidfile("registry")) is not None:
            _say("registry: the one started before does not answer; stopping it")
            stop_registry(layout)
        return _start_registry_locked(layout, port, ready_timeout)


def _start_registry_locked(layout: Layout, port: int | None, ready_timeout: float) -> str:
    if port is None:
        configured = os.environ.get("TICKCAST_LOCAL_REGISTRY_PORT")
        port = int(configured) if configured else free_port()
    if port_open(port):
        raise LocalInfraError(
            f"port {port} on 127.0.0.1 is already in use by another program, so the local Schema "
            f"Registry cannot start there; free it or pick another with TICKCAST_LOCAL_REGISTRY_PORT"
        )
    java = find_java()
    ensure_registry_app(layout)
    workdir = _registry_dir(layout)
    for d in (workdir, layout.logs, layout.run):
        d.mkdir(parents=True, exist_ok=True)
    management = free_port()
    while management == port:
        management = free_port()
    log = layout.logs / "registry.log"
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}"
    started = time.monotonic()
    with log.open("a") as out:
        proc = subprocess.Popen(
            [
                java,
                "-Xms64m",
                "-Xmx384m",
                "-XX:+UseSerialGC",
                # Start-up on 2 busy cores: C1 only (C2 compiling the boot competed with it), and
                # a class-data archive the JVM writes at the first clean exit and maps from then
                # on (rewritten by itself when the JDK or the jars change). Seen here: ready in
                # ~4 s instead of 9.5-24 s, RSS ~190 MB instead of ~230 MB.
                "-XX:TieredStopAtLevel=1",
                "-XX:+AutoCreateSharedArchive",
                f"-XX:SharedArchiveFile={workdir / 'registry.jsa'}",
                "-Djava.awt.headless=true",
                "-Dquarkus.http.host=127.0.0.1",
                f"-Dquarkus.http.port={port}",
                # Health and metrics listen on a port of their own (quarkus.management.enabled is
                # fixed at build time): loopback, any free port.
                "-Dquarkus.management.host=127.0.0.1",
                f"-Dquarkus.management.port={management}",
                "-jar",
                str(workdir / "app" / "quarkus-run.jar"),
            ],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    layout.pidfile("registry").write_text(str(proc.pid))
    (layout.run / "registry.port").write_text(str(port))
    deadline = started + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            layout.pidfile("registry").unlink(missing_ok=True)
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])[-400:]
            raise LocalInfraError(
                f"the Schema Registry exited with code {proc.returncode}: {tail} (log {log})"
            )
        if port_open(port) and _registry_answers(url):
            rss = _rss_mb(proc.pid) or 0.0
            _say(
                f"registry ready at {url} in {time.monotonic() - started:.1f} s "
                f"(pid {proc.pid}, RSS {rss:.0f} MB, log {log})"
            )
            return url
        time.sleep(0.25)
    raise LocalInfraError(
        f"the Schema Registry did not answer at {url} within {ready_timeout:.0f} s; see {log}"
    )


def stop_registry(layout: Layout | None = None) -> None:
    layout = layout or Layout.from_env()
    pid = _read_pid(layout.pidfile("registry"))
    # The first clean exit writes the class-data archive (~80 MB, ~14 s seen on 2 busy cores).
    _stop(layout, "registry", timeout=90.0)
    (layout.run / "registry.port").unlink(missing_ok=True)
    if pid is not None:
        # Reap it when this process started it (a test's fixture); elsewhere it is no child.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _registry_command(action: str) -> int:
    layout = Layout.from_env()
    if action == "up":
        print(start_registry(layout))
        return 0
    if action == "down":
        stop_registry(layout)
        return 0
    url = registry_url(layout)
    pid = _read_pid(layout.pidfile("registry"))
    if url is None or pid is None:
        print("registry stopped")
        return 1
    print(f"registry running   {url}  pid {pid}  RSS {_rss_mb(pid) or 0:.0f} MB")
    return 0


# ---------------------------------------------------------------- up / down / status


def _stop(layout: Layout, name: str, timeout: float = 30.0) -> None:
    pidfile = layout.pidfile(name)
    pid = _read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        _say(f"{name}: not running (nothing that `up` started)")
        return
    os.kill(pid, signal.SIGTERM)  # the broker shuts down cleanly on SIGTERM
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        _say(f"{name}: did not stop within {timeout:.0f} s; killed (pid {pid})")
    else:
        _say(f"{name}: stopped (pid {pid})")
    pidfile.unlink(missing_ok=True)


def up(layout: Layout | None = None, ports: Ports | None = None) -> tuple[str, str]:
    """Start both services (idempotent); returns (bootstrap servers, redis url)."""
    layout = layout or Layout.from_env()
    ports = ports or Ports.from_env()
    start_redis(layout, ports)
    start_kafka(layout, ports)
    return f"127.0.0.1:{ports.kafka}", f"redis://127.0.0.1:{ports.redis}/0"


def down(layout: Layout | None = None) -> None:
    layout = layout or Layout.from_env()
    _stop(layout, "kafka")
    _stop(layout, "redis")
    if _read_pid(layout.pidfile("registry")) is not None:
        stop_registry(layout)


def running(layout: Layout | None = None) -> dict[str, int]:
    """The pids of the local services `up` started that are running, by name."""
    layout = layout or Layout.from_env()
    pids = {name: _read_pid(layout.pidfile(name)) for name in ("kafka", "redis")}
    return {name: pid for name, pid in pids.items() if pid is not None}


def status(layout: Layout | None = None, ports: Ports | None = None) -> bool:
    layout = layout or Layout.from_env()
    ports = ports or Ports.from_env()
    ok = True
    for name, port in (("kafka", ports.kafka), ("redis", ports.redis)):
        pid = _read_pid(layout.pidfile(name))
        if pid is None:
            print(f"{name:6} stopped   port {port}")
            ok = False
        else:
            rss = _rss_mb(pid)
            print(f"{name:6} running   port {port}  pid {pid}  RSS {rss or 0:.0f} MB")
    print(f"logs   {layout.logs}")
    return ok


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["up", "down", "status", "tools", "registry"],
        help="tools: install what the tests need beyond Python (promtool, Prometheus, amtool); "
        "registry up|down|status: the local Schema Registry (Apicurio, Confluent-compatible)",
    )
    parser.add_argument(
        "registry_action",
        nargs="?",
        choices=["up", "down", "status"],
        default="status",
        help="with `registry`: start it (prints its URL), stop it, or show it",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "registry":
        return _registry_command(args.registry_action)
    if args.action == "up":
        up()
        print(f"logs: {Layout.from_env().logs}")
        return 0
    if args.action == "down":
        down()
        return 0
    if args.action == "tools":
        for path in (*ensure_prometheus(), ensure_amtool(), ensure_wrk()):
            print(path)
        return 0
    return 0 if status() else 1

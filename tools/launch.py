"""For the demo, the benchmarks and the end-to-end tests: find Kafka and Redis, and run
`tickcast run` as a child.

`ensure_services` uses the configured Kafka and Redis when they answer and starts the local ones
(tools/localinfra.py) when they do not. `ServiceProcess` is one `tickcast run` process with its
own metrics port and log file: started, waited for until /readyz answers, asked for its metrics,
stopped by a signal, restartable (the demo kills and restarts it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGTERM, Signals

from stream.config import Settings
from stream.errors import TickcastError, UnreachableError
from tools import localinfra


def ensure_services(settings: Settings) -> dict[str, str]:
    """Environment overrides pointing at services that answer (starting local ones if needed)."""
    from stream.kafka import check_reachable
    from stream.service import redis_client

    try:
        check_reachable(settings, timeout=3.0)
        kafka_ok = True
    except UnreachableError:
        kafka_ok = False
    try:
        redis_client(settings).close()
        redis_ok = True
    except UnreachableError:
        redis_ok = False
    if kafka_ok and redis_ok:
        print(
            f"using Kafka at {settings.kafka.bootstrap_servers} and Redis at {settings.redis.url}"
        )
        return {}
    print("no Kafka/Redis answering at the configured addresses: starting the local ones")
    bootstrap, redis_url = localinfra.up()
    env: dict[str, str] = {}
    if not kafka_ok:
        env["TICKCAST_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    if not redis_ok:
        env["TICKCAST_REDIS__URL"] = redis_url
    return env


@dataclass
class ServiceProcess:
    """`tickcast run` as a child process; settings from the environment (plus `env`)."""

    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    config_path: str | None = None
    cwd: Path | None = None  # None: this process's working directory (and its config.toml)
    port: int = field(default_factory=localinfra.free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _started_at: float = 0.0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "stream.cli"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        env = {**os.environ, **self.env, "TICKCAST_METRICS__PORT": str(self.port)}
        self.starts += 1
        self._started_at = time.perf_counter()
        with self.log_path.open("a") as log_file:
            self.proc = subprocess.Popen(
                [*cmd, "run"], cwd=self.cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait until /readyz answers 200; returns the seconds since start()."""
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TickcastError(
                    f"tickcast run exited with code {self.proc.returncode}: {self.tail(1) or '-'}"
                    f" (log {self.log_path})"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - self._started_at
            except OSError:
                pass
            time.sleep(0.02)
        raise TickcastError(
            f"tickcast run was not ready within {timeout:.0f} s; see {self.log_path}"
        )

    def get(self, path: str, attempts: int = 3) -> tuple[int, str]:
        """(status, body) of GET `path` on the metrics port (/metrics, /readyz, /healthz)."""
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                    return int(r.status), r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except ConnectionResetError:
                # A scrape racing a busy service loop can be reset; Prometheus would retry too.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by name with labels."""
        _, text = self.get("/metrics")
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and " " in line:
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def signal(self, sig: Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code; subprocess.TimeoutExpired if it still runs after `timeout` s."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: Signals = SIGTERM) -> int:
        """Send `sig` and wait for the exit code (killed after 20 s)."""
        self.signal(sig)
        try:
            return self.wait(20)
        except subprocess.TimeoutExpired:
            assert self.proc is not None
            self.proc.kill()
            return -9

    def stacks(self) -> str:
        """Every thread's Python and native stack (py-spy, when installed): what a process that
        does not answer is doing, for a test's failure message."""
        if self.proc is None or self.proc.poll() is not None:
            return "(not running)"
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            return "(py-spy not installed)"
        try:
            done = subprocess.run(
                [spy, "dump", "--native", "--pid", str(self.proc.pid)],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(py-spy failed: {exc})"
        return done.stdout + done.stderr

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

"""A private redis-server for tests that kill, restart or squeeze Redis (the shared one must not be).

Debian's `redis-server` on a free loopback port, without persistence, so a restart comes back
empty as the local Redis does after a crash.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import redis


def free_port() -> int:
    candidate = 20000 + uuid.uuid4().int % 10000
    while True:
        candidate += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate


class RedisProcess:
    def __init__(self, folder: Path, *args: str) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is needed (`tickcast services up`)"
        self.server = server
        self.folder = folder
        self.args = list(args)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--save", "", "--appendonly", "no", *self.args]
        self.process = subprocess.Popen(
            [self.server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port)
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                assert time.monotonic() < deadline, f"redis-server on {self.port} did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what is in memory is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart_empty(self) -> None:
        self.kill()
        self.start()

"""A real Prometheus server (Debian's `prometheus` package) for end-to-end tests: started on a free
port with a generated config that scrapes given targets every second and loads a copy of the
shipped alert rules, with their `for:` durations shortened so a test can watch one fire."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tools import localinfra

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOB = "tickcast"  # the job name the shipped rules select, as in deploy/prometheus/prometheus.yml


def rules_with_short_for(folder: Path, for_: str) -> Path:
    """A copy of the shipped rules in which every `for:` is `for_`."""
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    path = folder / "alerts.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@dataclass
class Prometheus:
    folder: Path
    targets: list[str]
    rule_for: str = "5s"
    interval: str = "1s"
    port: int = field(default_factory=localinfra.free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `tickcast services tools` installs it"
        self.folder.mkdir(parents=True, exist_ok=True)
        rules_with_short_for(self.folder, self.rule_for)
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": self.targets}]},
            ],
        }
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (self.folder / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, lines: int = 30) -> str:
        path = self.folder / "prometheus.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) `expr` evaluates to now."""
        data = self._api("query", query=expr)
        if data["resultType"] == "vector":
            return list(data["result"])
        return [{"metric": {}, "value": data["result"]}]

    def alert_states(self, name: str) -> list[str]:
        """The states (pending, firing) of the active alerts called `name`."""
        return [
            a["state"] for a in self._api("alerts")["alerts"] if a["labels"]["alertname"] == name
        ]

"""The alert rules and prometheus.yml, checked by Prometheus's own tool.

- every metric a rule names is one tickcast exports (a renamed metric must not silence an alert);
- `promtool test rules` runs tests/prometheus/alerts_test.yml, where every alert has a case in
  which it fires;
- `promtool check config` passes on prometheus.yml as it lies in the repository and as
  docker-compose.yml mounts it in the container.

promtool comes from Debian's `prometheus` package (`make test` installs it). Without it these
tests fail, never skip: a CI run that did not check the rules must not look green.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing: run `tickcast services tools` (or `make test`), which installs "
            "Debian's prometheus package"
        )
    return path


def _promtool_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def exported_metrics() -> set[str]:
    """Every sample name tickcast's registry can expose (labelled series have no sample before
    first use, so names come from the families)."""
    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
        if family.type == "summary":
            names.update(f"{family.name}_{s}" for s in ("sum", "count"))
    return names


def test_alerts_reference_exported_metrics() -> None:
    exported = exported_metrics()
    rules = _rules()
    assert any("tickcast_consumer_lag" in r["expr"] for r in rules)
    for rule in rules:
        for name in re.findall(r"\btickcast_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses unknown metric {name}"


def test_alerts_use_the_scrape_job_of_prometheus_yml() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    for rule in _rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']} selects job {job!r}, scraped jobs: {jobs}"


def test_no_instance_up_is_an_alert_on_up_that_fires_with_no_series_at_all() -> None:
    [down] = [r for r in _rules() if r["alert"] == "TickcastDown"]
    assert "absent(" in down["expr"] and "up{" in down["expr"]
    assert down["labels"]["severity"] == "page"


def test_rule_unit_tests_pass() -> None:
    proc = _promtool_run("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_case_in_which_it_fires() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    quiet = {
        check["alertname"]
        for case in cases
        for check in case.get("alert_rule_test", [])
        if not check.get("exp_alerts")
    }
    alerts = {r["alert"] for r in _rules()}
    assert alerts - firing == set(), "alerts never seen firing"
    # and, for all but the one-shot counters' alerts, a case in which it must stay quiet
    assert alerts - quiet == set(), "alerts never seen quiet"


def test_rule_tests_fail_when_a_rule_breaks(tmp_path: Path) -> None:
    """The cases have teeth: a rule that no longer fires on `absent` is caught."""
    broken = tmp_path / "deploy" / "prometheus"
    broken.mkdir(parents=True)
    text = RULES.read_text().replace('absent(up{job="tickcast"} == 1)', 'up{job="tickcast"} == 0')
    assert text != RULES.read_text()
    (broken / "alerts.yml").write_text(text)
    tests_dir = tmp_path / "tests" / "prometheus"
    tests_dir.mkdir(parents=True)
    shutil.copy(RULE_TESTS, tests_dir / RULE_TESTS.name)
    proc = _promtool_run("test", "rules", str(tests_dir / RULE_TESTS.name))
    assert proc.returncode != 0 and "TickcastDown" in proc.stdout + proc.stderr


def test_prometheus_config_is_valid_in_the_repository() -> None:
    proc = _promtool_run("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr


def test_prometheus_config_is_valid_as_mounted_in_the_container(tmp_path: Path) -> None:
    """The files laid out under a fake root exactly as docker-compose.yml mounts them."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounted = {}
    for volume in compose["services"]["prometheus"]["volumes"]:
        source, target = volume.split(":")[:2]
        dest = tmp_path / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, dest)
        mounted[target] = dest
    config = mounted["/etc/prometheus/prometheus.yml"]
    proc = _promtool_run("check", "config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout + proc.stderr

"""The alert rules name only metrics tickcast exports (a renamed metric must not silence an alert)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from stream.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def test_alerts_reference_exported_metrics() -> None:
    exported = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        exported.add(family.name)
        if family.type == "counter":  # a labelled counter has no sample until first use
            exported.add(f"{family.name}_total")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert any("tickcast_consumer_lag" in r["expr"] for r in rules)
    for rule in rules:
        for name in re.findall(r"\btickcast_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses unknown metric {name}"

"""The shipped Grafana dashboard: every query parses (promtool), names only series tickcast
exports, and every series has a legend that tells it apart; job/instance variables filter all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_alerts import _promtool_run, exported_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tickcast.json"

#: what Grafana substitutes before a query reaches Prometheus
GRAFANA_VARIABLES = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m"}


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _dashboard()["panels"] for t in p["targets"]]


def promql(expr: str) -> str:
    """A panel's query as Grafana sends it."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, legend, PromQL) of every series the dashboard draws."""
    return [(title, t["legendFormat"], promql(t["expr"])) for title, t in _targets()]


def test_every_query_parses(tmp_path: Path) -> None:
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"dashboard:query{i}", "expr": expr}
                            for i, (_, _, expr) in enumerate(dashboard_queries())
                        ],
                    }
                ]
            }
        )
    )
    proc = _promtool_run("check", "rules", str(rules))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_queries_name_only_exported_metrics() -> None:
    exported = exported_metrics() | {"up"}
    names_seen: set[str] = set()
    for title, _, expr in dashboard_queries():
        for name in re.findall(r"\b((?:tickcast|process|python)_[a-z_]+|up)\b(?=\s*[{\[)])", expr):
            assert name in exported, f"{title!r} queries {name}, which tickcast does not export"
            names_seen.add(name)
    assert {"tickcast_consumer_lag", "process_resident_memory_bytes"} <= names_seen


def test_every_series_has_a_legend_that_tells_it_apart() -> None:
    for panel in _dashboard()["panels"]:
        legends = [t.get("legendFormat", "") for t in panel["targets"]]
        assert all(legends), f"{panel['title']!r} has a series without a legend"
        assert len(set(legends)) == len(legends), f"{panel['title']!r} repeats a legend"
        assert panel["options"]["legend"]["showLegend"], panel["title"]


def test_quantile_panels_say_which_quantile() -> None:
    for title, legend, expr in dashboard_queries():
        m = re.match(r"histogram_quantile\((0\.\d+)", expr)
        if m:
            expected = "p" + str(round(float(m.group(1)) * 100))
            assert legend.startswith(expected), f"{title!r}: {legend!r} is not {expected}"


def test_job_and_instance_variables_filter_every_query() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert {"job", "instance", "datasource"} <= variables.keys()
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    for title, target in _targets():
        selectors = re.findall(r"\b[a-z_]+\{([^}]*)\}", target["expr"])
        assert selectors, f"{title!r}: a query without a label selector"
        for selector in selectors:
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, title


def test_the_operators_panels_are_there() -> None:
    exprs = " ".join(expr for _, _, expr in dashboard_queries())
    for metric in (
        "tickcast_inference_seconds_bucket",
        "tickcast_consumer_lag_seconds",
        "tickcast_state_losses_total",
        "tickcast_inference_errors_total",
        "tickcast_tick_to_forecast_seconds_bucket",
    ):
        assert metric in exprs, metric

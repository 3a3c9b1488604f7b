"""`tickcast models`: the artifacts in the folder of artifacts, which is served (CURRENT) and
which is the challenger, their held-out test figures from the manifest, and their live scores
as a running service reports them on its /metrics (summed since that service started).
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections import defaultdict

from stream import config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-url",
        help="a running service's /metrics (default: metrics.host and metrics.port)",
    )


def live_scores(text: str) -> dict[str, dict[str, float]]:
    """model_version -> scored, mae, mase, coverage, interval from a /metrics exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            version = sample.labels.get("model_version")
            if version is None or not sample.name.startswith("tickcast_score"):
                continue
            sums[version][sample.name] += sample.value
    out = {}
    for version, s in sums.items():
        scored = s.get("tickcast_scored_total", 0.0)
        if not scored:
            continue
        persistence = s.get("tickcast_score_persistence_abs_error_sum", 0.0)
        out[version] = {
            "scored": scored,
            "mae": s.get("tickcast_score_abs_error_sum", 0.0) / scored,
            "mase": s.get("tickcast_score_abs_error_sum", 0.0) / persistence
            if persistence
            else float("nan"),
            "coverage": s.get("tickcast_score_interval_hits_total", 0.0) / scored,
            "interval": s.get("tickcast_score_interval", float("nan")),
        }
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from stream.errors import ModelError
    from stream.predictor import MANIFEST, artifacts_dir, challenger_dir, resolve_artifact

    settings = config.load(args.config)
    folder = artifacts_dir(settings.model)
    try:
        current = resolve_artifact(str(folder)).name
    except ModelError:
        current = ""
    challenger = challenger_dir(settings.model)
    url = args.metrics_url or f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:  # noqa: S310 (an operator's URL)
            live = live_scores(reply.read().decode())
        source = url
    except (urllib.error.URLError, OSError) as exc:
        live, source = {}, f"no running service at {url} ({exc})"

    table = Table(title=f"models in {folder}; live scores from {source}")
    for column in (
        "version",
        "role",
        "test MASE",
        "test coverage",
        "live scored",
        "live MAE",
        "live MASE",
        "live coverage",
    ):
        table.add_column(column, justify="left" if column in ("version", "role") else "right")
    for manifest_path in sorted(folder.glob(f"*/{MANIFEST}")):
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        version = str(manifest.get("version", manifest_path.parent.name))
        roles = []
        if manifest_path.parent.name == current:
            roles.append("CURRENT")
        if challenger is not None and challenger.resolve() == manifest_path.parent.resolve():
            roles.append("challenger")
        test = manifest.get("test_metrics", {})
        score = live.get(version)
        table.add_row(
            version,
            ", ".join(roles),
            _fmt(test.get("model", {}).get("mase")),
            _fmt(test.get("interval", {}).get("coverage")),
            f"{score['scored']:,.0f}" if score else "",
            _fmt(score["mae"]) if score else "",
            _fmt(score["mase"]) if score else "",
            f"{_fmt(score['coverage'])} of {score['interval']:g}" if score else "",
        )
    Console(width=160).print(table)
    return 0


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ""

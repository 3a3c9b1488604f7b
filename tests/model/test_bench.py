"""`tickcast bench model` runs end to end on a tiny budget and reports every number it promises."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench import model as bench_model


def test_bench_model_onnx_smoke(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench_model.configure(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        [
            "--backends",
            "onnx",
            "--batch-sizes",
            "1,8",
            "--seconds",
            "0.05",
            "--startup-runs",
            "1",
            "--json",
            str(out),
        ]
    )
    assert bench_model.run(args) == 0
    onnx = json.loads(out.read_text())["backends"]["onnx"]
    assert set(onnx["batches"]) == {"1", "8"}
    assert all(b["windows_per_s"] > 0 and b["latency_ms"] > 0 for b in onnx["batches"].values())
    assert 0 < onnx["start_to_first_prediction_s"] < 30
    assert onnx["peak_rss_mb"] > 10
    # the serving backend starts without TensorFlow, in a fresh process
    assert onnx["tensorflow_imported"] is False

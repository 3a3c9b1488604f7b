"""`tickcast bench model`: the model's throughput, latency, start time and memory per backend.

Backends:
  onnx        ONNX Runtime, as `tickcast run` serves it (intra-op threads from --threads)
  tensorflow  the Keras model in one compiled tf.function (the reference backend)
  keras       keras.Model.predict per call, the way the ancestor project served it

Throughput and latency: one process, warm models, the median of repeated calls per batch size on
real gold windows. Start-up: each backend in a fresh Python process; the time from just before the
process is spawned to its first prediction (interpreter start, imports, artifact checks, model load,
one call), and the process's peak resident memory (ru_maxrss) at that point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BACKENDS = ("onnx", "tensorflow", "keras")
BATCH_SIZES = (1, 32, 256, 1024)

# Run in a fresh interpreter: load one backend, predict once, report when and how much memory.
_STARTUP_CHILD = """
import os, sys, time, resource
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
backend, path, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np
windows = np.full((1, 60), 1900.0)
if backend == "keras":
    from stream.predictor import KERAS_FILE, resolve_artifact, verify_artifact, relative_log_window
    import keras
    folder = resolve_artifact(path)
    verify_artifact(folder, window_size=60, horizon=1, files=("model.onnx", KERAS_FILE))
    model = keras.saving.load_model(str(folder / KERAS_FILE), compile=False)
    out = model.predict(relative_log_window(windows, 60), verbose=0)
else:
    from stream.config import ModelSettings
    from stream.predictor import load_predictor
    p = load_predictor(ModelSettings(path=path, backend=backend, intra_op_threads=threads), 60)
    out = p.predict_batch(windows)
assert np.asarray(out).shape[0] == 1 and np.asarray(out).ndim == 2  # one row of quantiles
done = time.time()
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(done, rss_kb, "tensorflow" in sys.modules)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--artifact", default="", metavar="DIR", help="artifact folder (default: CURRENT)"
    )
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {BACKENDS}"
    )
    parser.add_argument(
        "--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="comma-separated"
    )
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="time budget per backend and batch size"
    )
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime intra-op threads (as model.intra_op_threads)",
    )
    parser.add_argument(
        "--startup-runs", type=int, default=3, help="fresh processes per backend (median)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def _time_calls(call: Any, seconds: float, min_repeats: int) -> float:
    """Median seconds per call, after one warm-up call."""
    call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _callers(backend: str, folder: Path, threads: int) -> Any:
    """A function windows -> outputs for one warm backend."""
    from stream.config import ModelSettings
    from stream.predictor import (
        KERAS_FILE,
        ONNX_FILE,
        load_predictor,
        relative_log_window,
        verify_artifact,
    )

    if backend == "keras":
        import keras

        verify_artifact(folder, window_size=60, horizon=1, files=(ONNX_FILE, KERAS_FILE))
        model = keras.saving.load_model(str(folder / KERAS_FILE), compile=False)

        def predict(windows: Any) -> Any:
            x = relative_log_window(windows, 60)
            return model.predict(x, batch_size=len(x), verbose=0)

        return predict
    settings = ModelSettings(path=str(folder), backend=backend, intra_op_threads=threads)
    return load_predictor(settings, window_size=60).predict_batch


def _startup(backend: str, folder: Path, threads: int, runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    rss: list[float] = []
    tf_loaded = False
    if runs < 1:
        return {}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for _ in range(runs):
        started = time.time()
        result = subprocess.run(
            [sys.executable, "-c", _STARTUP_CHILD, backend, str(folder), str(threads)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"start-up run of {backend} failed:\n{result.stderr[-2000:]}")
        done, rss_kb, tf = result.stdout.split()[-3:]
        seconds.append(float(done) - started)
        rss.append(int(rss_kb) / 1024)
        tf_loaded = tf == "True"
    return {
        "start_to_first_prediction_s": statistics.median(seconds),
        "peak_rss_mb": statistics.median(rss),
        "tensorflow_imported": tf_loaded,
    }


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rich.console import Console
    from rich.table import Table

    from models.data import GOLD_CSV, load_prices
    from models.split import windows_for
    from stream.errors import TickcastError
    from stream.predictor import resolve_artifact

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise TickcastError(f"unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    folder = resolve_artifact(args.artifact)
    prices = load_prices(GOLD_CSV).prices
    pool = windows_for(prices, len(prices) - max(sizes) + 1, len(prices) + 1, 60)

    console = Console()
    results: dict[str, Any] = {"artifact": str(folder), "cpus": os.cpu_count(), "backends": {}}
    for backend in backends:
        console.print(f"[bold]{backend}[/]: start-up in fresh processes ...")
        entry = _startup(backend, folder, args.threads, args.startup_runs)
        call = _callers(backend, folder, args.threads)
        entry["batches"] = {}
        for size in sizes:
            windows = pool[:size]
            seconds = _time_calls(lambda w=windows, c=call: c(w), args.seconds, args.min_repeats)
            entry["batches"][size] = {
                "latency_ms": seconds * 1e3,
                "windows_per_s": size / seconds,
            }
            console.print(
                f"  batch {size:>5}: {seconds * 1e3:9.3f} ms, {size / seconds:12,.0f} windows/s"
            )
        results["backends"][backend] = entry

    table = Table(title=f"{folder.name} on {os.cpu_count()} CPUs")
    for column in ("backend", "batch", "windows/s", "ms per call"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for backend, entry in results["backends"].items():
        for size in sizes:
            b = entry["batches"][size]
            table.add_row(
                backend if size == sizes[0] else "",
                str(size),
                f"{b['windows_per_s']:,.0f}",
                f"{b['latency_ms']:.3f}",
            )
        table.add_section()
    console.print(table)
    start = Table(title="fresh process: start to first prediction, peak memory")
    for column in ("backend", "start to first prediction (s)", "peak RSS (MB)", "TensorFlow"):
        start.add_column(column, justify="left" if column == "backend" else "right")
    for backend, entry in results["backends"].items():
        if "start_to_first_prediction_s" not in entry:  # --startup-runs 0
            continue
        start.add_row(
            backend,
            f"{entry['start_to_first_prediction_s']:.2f}",
            f"{entry['peak_rss_mb']:.0f}",
            "imported" if entry["tensorflow_imported"] else "not imported",
        )
    console.print(start)
    console.print(
        f"ONNX Runtime with {args.threads} intra-op thread(s); TensorFlow and Keras with their"
        " default thread pools. Medians of repeated calls; start-up and RSS are medians of"
        f" {args.startup_runs} fresh processes."
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0

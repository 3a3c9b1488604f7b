"""`tickcast bench rivals`: tickcast against the same job done by Bytewax and by no framework.

Issue 14's outcome target: at least twice the throughput of a batched Bytewax dataflow doing the
same job on the same machine, while keeping every guarantee Bytewax lacks. In one invocation:

1. Replay T ticks over S symbols (default 200,000 over 100; the gold series as `bench e2e`
   replays it) into a fresh topic, once; every contender reads that same topic from its start.
2. The model-only ceiling, as `bench e2e` measures it: the predictor alone on exactly the full
   windows of the feed, in batches of `processing.max_batch` (windows/s, CPU per window).
3. R rounds (default 3); each round runs, one after the other (the order rotated per round),
   each contender as its own process with its own output topic:
     tickcast  the real `tickcast run` (tools.launch.ServiceProcess), at-least-once, a fresh
               group and Redis prefix, so every window is new and every cache lookup misses
     bytewax   bench/rival_bytewax.py: a batched Bytewax dataflow, windows in keyed state in
               process memory, one model call per batch, no Redis, no commits, no guarantee
     floor     bench/floor.py: the same job with no framework at all (consume(1000), dict of
               windows, one model call per batch, produce), the least a Python service spends
   Both rivals run the very same job code (bench.floor.Windows and Forecaster) and tickcast's own
   predictor, so a forecast's numbers and bytes are tickcast's (tests/integration/test_rivals.py
   holds them equal to the Pipeline's); what differs is the framework and what tickcast
   guarantees. Each contender is timed as an outside observer sees it: from the process launch to
   the last forecast a read_committed reader (bench/observer.py) sees; its whole-process CPU from
   /proc at that moment (all it spent since it was launched: start, model load, everything), the
   local broker's and Redis's CPU over the same span, launch to first forecast, peak RSS, and the
   forecasts in its topic, which must be one per full window for each (else the run fails).

Medians over the rounds; ratios between the contenders and against the ceiling measured in the
same invocation, so they hold from one machine to the next.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.e2e import (
    _clean_up,
    _cpu_seconds,
    _env,
    _peak_rss_mb,
    _published,
    _wait_for_quiet,
    model_ceiling,
    replay_feed,
)
from bench.observer import CommittedReader
from tools import localinfra
from tools.launch import ServiceProcess, ensure_services

CONTENDERS = ("tickcast", "bytewax", "floor")
RIVAL_MODULES = {"bytewax": "bench.rival_bytewax", "floor": "bench.floor"}
INSTALL = "pip install -c constraints.txt -e '.[bench]'"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="rounds of the three (medians)")
    parser.add_argument(
        "--bytewax-sink",
        choices=("own", "connector"),
        default="own",
        help="own: produce without waiting (Bytewax at its best); connector: bytewax's KafkaSink,"
        " which flushes after every batch",
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")


def run(args: argparse.Namespace) -> int:
    try:
        import bytewax  # noqa: F401
    except ImportError:
        print(f"bytewax is not installed; in the venv: {INSTALL}  (or `make install`)")
        return 2
    from stream import config

    bench_id = uuid.uuid4().hex[:8]
    try:
        return _run(args, bench_id)
    finally:
        _clean_up(config.load(args.config), bench_id, args.runs)


class _Launched:
    """A contender's process: its pid, how to stop it, where its log is."""

    def __init__(self, pid: int, alive: Callable[[], bool], stop: Callable[[], None], log: Path):
        self.pid, self.alive, self.stop, self.log = pid, alive, stop, log


def _launch_tickcast(logs: Path, ticks_topic: str, run_id: str) -> tuple[_Launched, str]:
    env = {**_env(ticks_topic, run_id), "TICKCAST_PROCESSING__GUARANTEE": "at-least-once"}
    svc = ServiceProcess(logs / f"bench-{run_id}.log", env)
    svc.start()
    assert svc.proc is not None
    proc = svc.proc

    def stop() -> None:
        svc.stop()

    return _Launched(proc.pid, lambda: proc.poll() is None, stop, svc.log_path), env[
        "TICKCAST_TOPICS__FORECASTS"
    ]


def _launch_rival(
    module: str, logs: Path, ticks_topic: str, target: str, extra: list[str]
) -> _Launched:
    log = logs / f"{target}.log"
    with log.open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, ticks_topic, target, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)

    return _Launched(proc.pid, lambda: proc.poll() is None, stop, log)


def _local_cpu(services: dict[str, int]) -> float:
    """CPU seconds so far of the local broker and Redis (0 when they run elsewhere)."""
    got = _cpu_seconds(os.getpid(), services)
    return sum(v for k, v in got.items() if k.endswith("(local)"))


def _run(args: argparse.Namespace, bench_id: str) -> int:
    from confluent_kafka.admin import AdminClient
    from rich.console import Console
    from rich.table import Table

    from stream import config
    from stream.kafka import ensure_topics

    console = Console(width=max(Console().width, 120))  # five columns: readable when piped
    os.environ.update(ensure_services(config.load(args.config)))
    settings = config.load(args.config)
    logs = Path(os.environ.get("TICKCAST_LOCAL_DIR", ".local")) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    load1 = os.getloadavg()[0]

    # ---------------------------------------------------------------- 1. the feed
    topic, feed = replay_feed(settings, args, bench_id, console)

    # ---------------------------------------------------------------- 2. the ceiling
    ceiling_runs, ceiling_cpu_us, expected, step = model_ceiling(settings, feed, args.runs)
    ceiling = statistics.median(ceiling_runs)
    model_cpu_us = statistics.median(ceiling_cpu_us)
    console.print(
        f"model-only ceiling: {ceiling:,.0f} windows/s, {model_cpu_us:.1f} us CPU per window"
        f" (batches of {step}); {expected:,} full windows in the feed"
    )

    # ---------------------------------------------------------------- 3. the rounds
    admin = AdminClient(settings.kafka.librdkafka_common())
    services = localinfra.running()
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in CONTENDERS}
    connector_sink = args.bytewax_sink == "connector"
    for r in range(args.runs):
        order = CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]
        for kind in order:
            run_id = f"{bench_id}-{r}"
            if kind == "tickcast":
                env = _env(topic, run_id)
                target = env["TICKCAST_TOPICS__FORECASTS"]
                ensure_topics(settings, [target, env["TICKCAST_TOPICS__DEAD_LETTER"]])
            else:
                target = f"bench-{run_id}-{kind}.forecasts"
                ensure_topics(settings, [target])
            extra = ["--connector-sink"] if kind == "bytewax" and connector_sink else []
            result = _measure(
                kind, settings, admin, services, logs, topic, run_id, target, expected, extra
            )
            result["ticks_per_s"] = len(feed) / result["launch_to_last_forecast_s"]
            results[kind].append(result)
            console.print(
                f"round {r + 1}/{args.runs} {kind}: {result['forecasts_per_s']:,.0f} forecasts/s"
                f" from launch, {result['process_cpu_us_per_forecast']:.1f} us CPU per forecast,"
                f" first forecast at {result['launch_to_first_forecast_s']:.2f} s"
            )

    # ---------------------------------------------------------------- 4. report
    keys = (
        "forecasts_per_s",
        "ticks_per_s",
        "steady_forecasts_per_s",
        "launch_to_first_forecast_s",
        "launch_to_last_forecast_s",
        "process_cpu_us_per_forecast",
        "local_services_cpu_us_per_forecast",
        "peak_rss_mb",
        "published",
    )
    med = {k: {m: statistics.median(r[m] for r in results[k]) for m in keys} for k in CONTENDERS}
    t, b, f = med["tickcast"], med["bytewax"], med["floor"]
    ratios = {
        "tickcast_over_bytewax_throughput": t["forecasts_per_s"] / b["forecasts_per_s"],
        "tickcast_over_floor_throughput": t["forecasts_per_s"] / f["forecasts_per_s"],
        "tickcast_over_bytewax_cpu": t["process_cpu_us_per_forecast"]
        / b["process_cpu_us_per_forecast"],
        "tickcast_over_floor_cpu": t["process_cpu_us_per_forecast"]
        / f["process_cpu_us_per_forecast"],
        **{f"{k}_over_ceiling": med[k]["forecasts_per_s"] / ceiling for k in CONTENDERS},
        **{
            f"{k}_cpu_over_model_cpu": med[k]["process_cpu_us_per_forecast"] / model_cpu_us
            for k in CONTENDERS
        },
    }

    table = Table(
        title=f"tickcast bench rivals ({len(feed):,} ticks, {args.symbols} symbols, "
        f"{expected:,} forecasts, {args.runs} rounds, medians; load average {load1:.2f} at start"
        + ("; Bytewax with its own KafkaSink)" if connector_sink else ")")
    )
    table.add_column("measure")
    for k in CONTENDERS:
        table.add_column(k, justify="right")
    table.add_column("model alone", justify="right")

    def row(name: str, fmt: Callable[[dict[str, float], str], str], model: str = "") -> None:
        table.add_row(name, *(fmt(med[k], k) for k in CONTENDERS), model)

    row(
        "forecasts/s, launch to last forecast read",
        lambda m, _: f"{m['forecasts_per_s']:,.0f}",
        f"{ceiling:,.0f}",
    )
    row("  ratio to the model-only ceiling", lambda m, _: f"{m['forecasts_per_s'] / ceiling:.0%}")
    row("  ticks/s from launch", lambda m, _: f"{m['ticks_per_s']:,.0f}")
    row(
        "forecasts/s, first to last forecast read",
        lambda m, _: f"{m['steady_forecasts_per_s']:,.0f}",
    )
    row(
        "launch to first / last forecast",
        lambda m, _: (
            f"{m['launch_to_first_forecast_s']:.2f} / {m['launch_to_last_forecast_s']:.2f} s"
        ),
    )
    row(
        "whole-process CPU per forecast, from launch",
        lambda m, _: f"{m['process_cpu_us_per_forecast']:.1f} us",
        f"{model_cpu_us:.1f} us",
    )
    row(
        "  ratio to the model's own CPU per window",
        lambda m, _: f"{m['process_cpu_us_per_forecast'] / model_cpu_us:.2f}x",
    )
    row(
        "local broker + Redis CPU per forecast, same span",
        lambda m, _: f"{m['local_services_cpu_us_per_forecast']:.1f} us",
    )
    row("peak RSS", lambda m, _: f"{m['peak_rss_mb']:.0f} MB")
    row("forecasts published (one per full window)", lambda m, _: f"{m['published']:,.0f}")
    table.add_row(
        "tickcast / Bytewax, forecasts/s from launch (target >= 2x)",
        f"{ratios['tickcast_over_bytewax_throughput']:.2f}x",
        "",
        "",
        "",
    )
    table.add_row(
        "tickcast / floor, forecasts/s from launch",
        f"{ratios['tickcast_over_floor_throughput']:.2f}x",
        "",
        "",
        "",
    )
    table.add_row(
        "tickcast / Bytewax, CPU per forecast",
        f"{ratios['tickcast_over_bytewax_cpu']:.2f}x",
        "",
        "",
        "",
    )
    table.add_row(
        "tickcast / floor, CPU per forecast",
        f"{ratios['tickcast_over_floor_cpu']:.2f}x",
        "",
        "",
        "",
    )
    console.print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import bytewax

    result_doc = {
        "ticks": len(feed),
        "symbols": args.symbols,
        "forecasts_expected": expected,
        "load_average_1m_at_start": load1,
        "bytewax_sink": args.bytewax_sink,
        "bytewax_version": getattr(bytewax, "__version__", None) or _version("bytewax"),
        "ceiling_windows_per_s": ceiling,
        "ceiling_runs": ceiling_runs,
        "model_cpu_us_per_window": model_cpu_us,
        "median": med,
        "ratios": ratios,
        "runs": results,
    }
    path = out / f"rivals-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result_doc, indent=2))
    console.print(f"saved {path}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _measure(
    kind: str,
    settings: Any,
    admin: Any,
    services: dict[str, int],
    logs: Path,
    topic: str,
    run_id: str,
    target: str,
    expected: int,
    extra: list[str],
) -> dict[str, Any]:
    """One contender over the whole topic, timed from its launch to the last forecast read."""
    from confluent_kafka import TopicPartition

    output = [
        TopicPartition(target, p)
        for p in admin.list_topics(target, timeout=10).topics[target].partitions
    ]
    _wait_for_quiet(timeout_s=10.0)
    reader = CommittedReader(settings.kafka.librdkafka_common(), target, expected)
    reader.start()
    if not reader.ready.wait(30):
        raise RuntimeError(
            f"{kind}: the read_committed reader of {target} got no assignment in 30 s"
        )
    local_before = _local_cpu(services)
    launched_at = time.perf_counter()
    if kind == "tickcast":
        proc, _ = _launch_tickcast(logs, topic, run_id)
    else:
        proc = _launch_rival(RIVAL_MODULES[kind], logs, topic, target, extra)
    try:
        deadline = time.monotonic() + 600
        while not reader.done.wait(0.1):
            if not proc.alive():
                raise RuntimeError(f"{kind} exited after {reader.seen} forecasts; see {proc.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {reader.seen} of {expected} forecasts in 600 s")
        # All it spent since the launch: the process started at zero.
        whole = sum(_cpu_seconds(proc.pid, {}).values())
        local = _local_cpu(services) - local_before
        rss = _peak_rss_mb(proc.pid)
        published = _published(admin, output)
    finally:
        proc.stop()
        reader.finish(0)
    if published != expected:
        raise RuntimeError(
            f"{kind} published {published} forecasts where the feed has {expected} full windows:"
            " the comparison would not be like with like"
        )
    assert reader.first_at is not None and reader.last_at is not None
    span = reader.last_at - launched_at
    return {
        "launch_to_first_forecast_s": reader.first_at - launched_at,
        "launch_to_last_forecast_s": span,
        "forecasts_per_s": expected / span,
        "steady_forecasts_per_s": expected / max(reader.last_at - reader.first_at, 1e-9),
        "process_cpu_us_per_forecast": whole * 1e6 / expected,
        "local_services_cpu_us_per_forecast": local * 1e6 / expected,
        "peak_rss_mb": rss,
        "published": published,
    }

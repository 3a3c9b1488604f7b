"""`tickcast bench e2e`: the real service against the model alone, on the same windows.

1. Replay T ticks over S symbols (default 200,000 over 100, the real gold series rotated and scaled
   per symbol) into a fresh topic.
2. Model-only ceiling: the predictor alone on exactly the windows the service will see, in batches
   of `processing.max_batch`: windows/s.
3. Throughput, R runs: a fresh `tickcast run` process (new group, new Redis prefix, so every window
   is new and every cache lookup misses) consumes the whole topic. Cold start to /readyz, ready to
   the last forecast, forecasts/s and ticks/s, per-stage time from its own metrics, peak RSS,
   and CPU per forecast (from /proc) of the service's threads and of the local broker and Redis.
   Then bench/relay.py, a consume-produce loop doing nothing else, over the same ticks.
4. Latency: a fresh service; the symbols' windows warmed first, then ticks paced at --rate
   (default 1,000/s), the first --warmup-seconds untimed; tick produce to forecast receipt,
   measured by a reader on the same clock. The same for one Kafka hop and for the relay.

Medians over the runs; ratios against the ceiling measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.observer import CommittedReader
from tools import localinfra
from tools.launch import ServiceProcess, ensure_services

STAGES = ("decode", "window", "cache", "inference", "produce", "commit")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs (median reported)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced ticks/s for latency")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3.0,
        help="paced seconds before the latency is timed (reported apart: the first second after idle)",
    )
    parser.add_argument(
        "--guarantee",
        choices=("at-least-once", "exactly-once"),
        default=None,
        help="processing.guarantee of the service runs (default: the configured one)",
    )
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")


def _sum(metrics: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(prefix))


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace) -> int:
    from stream import config

    bench_id = uuid.uuid4().hex[:8]
    try:
        return _run(args, bench_id)
    finally:
        _clean_up(config.load(args.config), bench_id, args.runs)


def _clean_up(settings: Any, bench_id: str, runs: int) -> None:
    """Delete the benchmark's topics and Redis keys: a broker slows down as partitions pile up
    (seen here: tick-to-forecast p50 tripled with a few hundred leftover partitions)."""
    from confluent_kafka.admin import AdminClient

    from stream.kafka import delete_topics
    from stream.service import delete_keys, redis_client

    admin = AdminClient(settings.kafka.librdkafka_common())
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"bench-{bench_id}")]
    delete_topics(settings, mine)
    client = redis_client(settings)
    try:
        for suffix in [*map(str, range(runs)), "lat"]:
            delete_keys(client, f"bench-{bench_id}-{suffix}")
    finally:
        client.close()


def _run(args: argparse.Namespace, bench_id: str) -> int:
    from rich.console import Console
    from rich.table import Table

    from models.data import GOLD_CSV, load_prices
    from stream import config
    from stream.kafka import ensure_topics

    console = Console()
    os.environ.update(ensure_services(config.load(args.config)))
    settings = config.load(args.config)
    logs = Path(os.environ.get("TICKCAST_LOCAL_DIR", ".local")) / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- 1. the feed
    topic, feed = replay_feed(settings, args, bench_id, console)

    # ---------------------------------------------------------------- 2. the ceiling
    ceiling_runs, ceiling_cpu_us, expected, step = model_ceiling(settings, feed, args.runs)
    ceiling = statistics.median(ceiling_runs)
    model_cpu_us = statistics.median(ceiling_cpu_us)
    console.print(f"model-only ceiling: {ceiling:,.0f} windows/s (batches of {step})")

    # ---------------------------------------------------------------- 3. throughput
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka.librdkafka_common())
    # CPU of the local broker and Redis too, when they are the ones this machine runs.
    services = localinfra.running()
    runs: list[dict[str, Any]] = []
    for r in range(args.runs):
        run_id = f"{bench_id}-{r}"
        env = _env(topic, run_id)
        forecasts_topic = env["TICKCAST_TOPICS__FORECASTS"]
        ensure_topics(settings, [forecasts_topic, env["TICKCAST_TOPICS__DEAD_LETTER"]])
        output = [
            TopicPartition(forecasts_topic, p)
            for p in admin.list_topics(forecasts_topic, timeout=10)
            .topics[forecasts_topic]
            .partitions
        ]
        if args.guarantee:
            env["TICKCAST_PROCESSING__GUARANTEE"] = args.guarantee
        # The outside view: a read_committed reader, the clock started at the process launch.
        reader = CommittedReader(settings.kafka.librdkafka_common(), forecasts_topic, expected)
        reader.start()
        reader.ready.wait(30)
        svc = ServiceProcess(logs / f"bench-{run_id}.log", env)
        launched = time.perf_counter()
        svc.start()
        ready_s = svc.wait_ready()
        pid = svc.proc.pid if svc.proc else 0
        cpu_before = _cpu_seconds(pid, services)
        t0 = time.perf_counter()
        try:
            # Done when the forecasts topic holds them all, asked of the broker: scraping the
            # service's /metrics this often would take its CPU (and GIL) from the run measured.
            while (published := _published(admin, output)) < expected:
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"run {r}: only {published} forecasts in 600 s")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            m = svc.metrics()
            stages = {
                k.split('stage="')[1].split('"')[0]: v
                for k, v in m.items()
                if k.startswith("tickcast_batch_seconds_sum")
            }
            cpu_after = _cpu_seconds(pid, services)
            if not reader.finish(120):
                raise RuntimeError(
                    f"run {r}: a read_committed reader saw {reader.seen} of {expected} forecasts"
                )
            assert reader.first_at is not None and reader.last_at is not None
            # The process started at zero: its CPU now is all it spent since the launch.
            whole = _cpu_seconds(pid, {})
            rss = _peak_rss_mb(pid)
        finally:
            svc.stop()
            reader.finish(0)
        runs.append(
            {
                "ready_s": ready_s,
                "seconds": elapsed,
                "ticks_per_s": len(feed) / elapsed,
                "forecasts_per_s": expected / elapsed,
                "stages": stages,
                "peak_rss_mb": rss,
                # CPU microseconds per forecast, by process and thread, while it ran
                "cpu_us_per_forecast": {
                    k: (cpu_after[k] - cpu_before[k]) * 1e6 / expected for k in cpu_after
                },
                "outside": {
                    "launch_to_ready_s": ready_s,
                    "launch_to_first_forecast_s": reader.first_at - launched,
                    "launch_to_last_forecast_s": reader.last_at - launched,
                    "forecasts_per_s": expected / (reader.last_at - launched),
                    "ticks_per_s": len(feed) / (reader.last_at - launched),
                    "process_cpu_us_per_forecast": sum(whole.values()) * 1e6 / expected,
                    "thread_cpu_us_per_forecast": {k: v * 1e6 / expected for k, v in whole.items()},
                },
            }
        )
        console.print(
            f"run {r + 1}/{args.runs}: {len(feed) / elapsed:,.0f} ticks/s, {expected / elapsed:,.0f} forecasts/s, "
            f"ready in {ready_s:.2f} s, peak RSS {rss:.0f} MB"
        )

    relay_run = _reference(lambda: _relay_throughput(settings, admin, topic, len(feed)), console)

    # ---------------------------------------------------------------- 4. latency
    latency = _latency(settings, bench_id, args, load_prices(GOLD_CSV), logs)
    floor_s = min(args.latency_seconds, 10.0)
    warmup_s = args.warmup_seconds
    hop = _kafka_hop(settings, f"bench-{bench_id}-hop", args.rate, floor_s, warmup_s)
    relayed = _kafka_hop(
        settings, f"bench-{bench_id}-relay", args.rate, floor_s, warmup_s, relay=True
    )

    med = {
        k: statistics.median(r[k] for r in runs)
        for k in ("ready_s", "ticks_per_s", "forecasts_per_s", "peak_rss_mb")
    }
    table = Table(
        title=f"tickcast bench e2e ({len(feed):,} ticks, {args.symbols} symbols, {args.runs} runs, medians)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("model-only ceiling", f"{ceiling:,.0f} windows/s", "")
    table.add_row(
        "service, sustained",
        f"{med['forecasts_per_s']:,.0f} forecasts/s ({med['ticks_per_s']:,.0f} ticks/s)",
        "",
    )
    table.add_row("ratio to ceiling", f"{med['forecasts_per_s'] / ceiling:.0%}", ">= 50%")
    # The outside view: from the launch to the last forecast a read_committed reader saw.
    out_med = {
        k: statistics.median(r["outside"][k] for r in runs)
        for k in (
            "forecasts_per_s",
            "ticks_per_s",
            "launch_to_first_forecast_s",
            "launch_to_last_forecast_s",
            "process_cpu_us_per_forecast",
        )
    }
    table.add_row(
        "outside view: from launch to the last forecast read (read_committed)",
        f"{out_med['forecasts_per_s']:,.0f} forecasts/s ({out_med['ticks_per_s']:,.0f} ticks/s)",
        "",
    )
    table.add_row(
        "  ratio to ceiling, from launch", f"{out_med['forecasts_per_s'] / ceiling:.0%}", ">= 40%"
    )
    table.add_row(
        "  launch to first / last forecast",
        f"{out_med['launch_to_first_forecast_s']:.2f} / {out_med['launch_to_last_forecast_s']:.2f} s",
        "",
    )
    table.add_row(
        "  whole-process CPU per forecast, from launch",
        f"{out_med['process_cpu_us_per_forecast']:.1f} us "
        f"({out_med['process_cpu_us_per_forecast'] / model_cpu_us:.2f}x the model's own "
        f"{model_cpu_us:.1f} us CPU per window)",
        "<= 1.5x",
    )
    for k in runs[0]["outside"]["thread_cpu_us_per_forecast"]:
        v = statistics.median(r["outside"]["thread_cpu_us_per_forecast"][k] for r in runs)
        table.add_row(f"    {k}", f"{v:.1f} us", "")
    table.add_row(
        f"tick-to-forecast p50 at {args.rate:,.0f}/s", f"{latency['p50_ms']:.1f} ms", "<= 5 ms"
    )
    table.add_row(
        f"tick-to-forecast p99 at {args.rate:,.0f}/s", f"{latency['p99_ms']:.1f} ms", "<= 25 ms"
    )
    table.add_row(
        "  one plain Kafka hop, p50 / p99",
        f"{hop['p50_ms']:.2f} / {hop['p99_ms']:.1f} ms",
        "",
    )
    table.add_row(
        "  a do-nothing Python relay (two hops), p50 / p99",
        f"{relayed['p50_ms']:.2f} / {relayed['p99_ms']:.1f} ms",
        "",
    )
    table.add_row("cold start to ready", f"{med['ready_s']:.2f} s", "<= 3 s")
    table.add_row("peak RSS", f"{med['peak_rss_mb']:.0f} MB", "<= 400 MB")
    table.add_row(
        f"latency, worst second at {args.rate:,.0f}/s",
        f"p50 {latency['worst_second_p50_ms']:.0f} ms, max {latency['max_ms']:.0f} ms",
        "",
    )
    first = latency["first_second_after_idle"]
    table.add_row(
        f"  first paced second after idle (not timed above; {args.warmup_seconds:g} s warm-up)",
        f"p50 {first['p50_ms']:.0f} ms, max {first['max_ms']:.0f} ms; the benchmark's own tick "
        f"produce acked in {first['tick_produce_ack_max_ms']:.0f} ms at worst",
        "",
    )
    # Where a run's wall time went, from the service's own batch_seconds: ms per 1,000 ticks.
    share = {
        stage: statistics.median(r["stages"].get(stage, 0.0) / r["seconds"] for r in runs)
        for stage in STAGES
    }
    ms_per_k = 1e6 / med["ticks_per_s"]
    for stage in STAGES:
        table.add_row(
            f"  {stage}",
            f"{share[stage] * ms_per_k:.1f} ms per 1,000 ticks ({share[stage]:.0%})",
            "",
        )
    table.add_row("  (the model thread's stages overlap the loop's)", "", "")
    # Where the CPU went, per forecast, and what two cores allow at that cost.
    cpu = {
        k: statistics.median(r["cpu_us_per_forecast"][k] for r in runs)
        for k in runs[0]["cpu_us_per_forecast"]
    }
    total_us = sum(cpu.values())
    table.add_row(
        "CPU per forecast, all processes",
        f"{total_us:.1f} us (2 cores: at most {2e6 / total_us:,.0f}/s)",
        f"<= {2e6 / (0.75 * ceiling):.1f} us",
    )
    for k, v in cpu.items():
        table.add_row(f"  {k}", f"{v:.1f} us", "")
    table.add_row("  the model alone (the ceiling's own cost)", f"{1e6 / ceiling:.1f} us", "")
    if relay_run["messages_per_s"] is not None:
        table.add_row(
            "  a do-nothing Python relay over the same ticks",
            f"{relay_run['messages_per_s']:,.0f} msg/s, its loop "
            f"{relay_run['loop_us_per_message']:.1f} us/msg",
            "",
        )
    console.print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "ticks": len(feed),
        "symbols": args.symbols,
        "windows": expected,
        "ceiling_windows_per_s": ceiling,
        "ceiling_runs": ceiling_runs,
        "model_cpu_us_per_window": model_cpu_us,
        "guarantee": args.guarantee or settings.processing.guarantee,
        "outside_median": out_med,
        "runs": runs,
        "median": med,
        "latency": latency,
        "kafka_hop": hop,
        "relay": relayed,
        "relay_throughput": relay_run,
    }
    path = out / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    console.print(f"saved {path}")
    return 0


def replay_feed(
    settings: Any, args: argparse.Namespace, bench_id: str, console: Any
) -> tuple[str, list[Any]]:
    """`args.ticks` ticks over `args.symbols` symbols (the gold series rotated and scaled per
    symbol) written to a fresh topic; the topic and the ticks."""
    from models.data import GOLD_CSV, load_prices
    from stream.kafka import ensure_topics
    from tools.feed import ticks

    series = load_prices(GOLD_CSV)
    feed = list(
        ticks(series.dates, series.prices, args.symbols, "BENCH", args.ticks // args.symbols)
    )
    topic = f"bench-{bench_id}.ticks"
    ensure_topics(settings, [topic])
    produce_s = _produce_all(settings, topic, [(m.key, m.value) for m in feed])
    console.print(f"replayed {len(feed):,} ticks over {args.symbols} symbols in {produce_s:.1f} s")
    return topic, feed


def model_ceiling(
    settings: Any, feed: list[Any], runs: int
) -> tuple[list[float], list[float], int, int]:
    """The predictor alone on exactly the feed's full windows, in batches of max_batch, at least
    three times: windows/s and the model's own CPU per window (all its threads) of each run, the
    number of full windows, and the batch size."""
    import numpy as np
    import orjson

    from stream.predictor import load_predictor

    window = settings.window.size
    per_symbol: dict[str, list[float]] = {}
    windows = []
    for m in feed:
        obj = orjson.loads(m.value)
        prices = per_symbol.setdefault(obj["symbol"], [])
        prices.append(obj["price"])
        if len(prices) >= window:
            windows.append(prices[-window:])
    stacked = np.asarray(windows, dtype=np.float64)
    del windows, per_symbol  # 11 million float objects the collector would walk while timing
    predictor = load_predictor(settings.model, window)
    step = settings.processing.max_batch
    predictor.predict_batch(stacked[:step])  # warm-up
    ceiling_runs: list[float] = []
    ceiling_cpu_us: list[float] = []
    for _ in range(max(runs, 3)):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(stacked), step):
            predictor.predict_batch(stacked[i : i + step])
        ceiling_runs.append(len(stacked) / (time.perf_counter() - t0))
        ceiling_cpu_us.append((time.process_time() - c0) * 1e6 / len(stacked))
    return ceiling_runs, ceiling_cpu_us, len(stacked), step


def _reference(measure: Callable[[], dict[str, Any]], console: Any) -> dict[str, Any]:
    """The relay's throughput, a reference beside the service's runs: when it cannot be measured
    (the relay produced nothing on a machine busy with other work), the service's runs stand and
    the reference is reported missing, rather than the whole benchmark lost."""
    try:
        return measure()
    except RuntimeError as exc:
        console.print(f"relay throughput not measured: {exc}")
        return {"messages_per_s": None, "loop_us_per_message": None, "error": str(exc)}


def _relay_throughput(settings: Any, admin: Any, topic: str, messages: int) -> dict[str, Any]:
    """bench/relay.py (consume, re-produce, nothing else) over the same ticks: the cost of the
    Kafka part alone in Python, the loop any consume-produce service here starts from."""
    import subprocess
    import sys

    from confluent_kafka import TopicPartition

    from stream.kafka import ensure_topics

    target = f"{topic}.relayed"
    ensure_topics(settings, [target])
    meta = admin.list_topics(target, timeout=10).topics[target]
    output = [TopicPartition(target, p) for p in meta.partitions]
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay", topic, target])
    try:
        deadline = time.monotonic() + 120
        while (first := _published(admin, output)) == 0:  # its group joined, a batch is out
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the relay produced nothing in 120 s")
            time.sleep(0.01)
        t0 = time.perf_counter()
        before = _cpu_seconds(proc.pid, {})
        while _published(admin, output) < messages:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("the relay did not finish in 600 s")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        after = _cpu_seconds(proc.pid, {})
    finally:
        proc.terminate()
        proc.wait(15)
    timed = messages - first
    if timed <= 0:  # a tiny feed, relayed whole before the first look
        return {"messages_per_s": None, "loop_us_per_message": None}
    loop_s = after["service loop thread"] - before["service loop thread"]
    return {"messages_per_s": timed / elapsed, "loop_us_per_message": loop_s * 1e6 / timed}


def _cpu_seconds(pid: int, services: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far: the service's loop (main) thread, its librdkafka threads
    (named rdk:*), the rest of it (the model thread, the metrics server), and each local service.

    A process's own line counts the threads that have exited too; its tasks' lines do not, so
    "others" is the process total less the two thread groups named.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def seconds(stat: str) -> tuple[str, float]:
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        return name, (int(fields[11]) + int(fields[12])) / tick

    def read(path: Path) -> str:
        try:
            return path.read_text()
        except OSError:
            return "0 (gone) S" + " 0" * 50

    _, total = seconds(read(Path(f"/proc/{pid}/stat")))
    main = rdkafka = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        name, secs = seconds(read(task / "stat"))
        if task.name == str(pid):
            main = secs
        elif name.startswith("rdk:"):
            rdkafka += secs
    out = {
        "service loop thread": main,
        "service librdkafka threads": rdkafka,
        "service model thread and others": total - main - rdkafka,
    }
    for name, service_pid in services.items():
        out[f"{name} (local)"] = seconds(read(Path(f"/proc/{service_pid}/stat")))[1]
    return out


def _env(ticks_topic: str, run_id: str) -> dict[str, str]:
    return {
        "TICKCAST_TOPICS__TICKS": ticks_topic,
        "TICKCAST_TOPICS__FORECASTS": f"bench-{run_id}.forecasts",
        "TICKCAST_TOPICS__DEAD_LETTER": f"bench-{run_id}.dlq",
        "TICKCAST_KAFKA__GROUP_ID": f"bench-{run_id}",
        "TICKCAST_REDIS__KEY_PREFIX": f"bench-{run_id}",
    }


def _wait_for_quiet(idle: float = 0.75, timeout_s: float = 30.0) -> float:
    """Before a paced phase: freeze this process's objects out of the garbage collector's view,
    then wait until the machine's CPUs are at least `idle` idle over two half-second samples (or
    `timeout_s`); returns the seconds waited.

    The paced phase follows the throughput runs, after which the broker keeps the CPUs busy for
    several seconds (its own clean-up, the page cache writing back); and a full collection of the
    benchmark's own feed, mid-phase, stalled its paced producer for a few hundred ms. Without
    both, the first paced second measured the benchmark, not the service.
    """
    import gc

    gc.collect()
    gc.freeze()

    def cpu_times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    started = time.monotonic()
    quiet = 0
    last = cpu_times()
    while quiet < 2 and time.monotonic() - started < timeout_s:
        time.sleep(0.5)
        now = cpu_times()
        busy_share = 1 - (now[0] - last[0]) / max(now[1] - last[1], 1)
        quiet = quiet + 1 if 1 - busy_share >= idle else 0
        last = now
    return time.monotonic() - started


def _published(admin: Any, partitions: list[Any], settle_s: float = 10.0) -> int:
    """Messages in the partitions: the sum of their high watermarks, in one broker request.

    A topic just made answers with one transient error or another for a moment (no leader yet,
    an older leader epoch; librdkafka flags not all of them retriable): asked again for up to
    `settle_s` before an error counts.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import OffsetSpec

    deadline = time.monotonic() + settle_s
    while True:
        futures = admin.list_offsets(
            {tp: OffsetSpec.latest() for tp in partitions}, request_timeout=10
        )
        try:
            return sum(f.result().offset for f in futures.values())
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _produce_all(settings: Any, topic: str, messages: list[tuple[bytes | None, bytes]]) -> float:
    from stream.kafka import Sink, producer_config

    sink = Sink(producer_config(settings))
    t0 = time.perf_counter()
    for key, value in messages:
        sink.produce(topic, key, value)
    if sink.flush(120):
        raise RuntimeError("replay not delivered within 120 s")
    return time.perf_counter() - t0


def _kafka_hop(
    settings: Any, topic: str, rate: float, seconds: float, warmup_s: float, relay: bool = False
) -> dict[str, float]:
    """The floor under tick-to-forecast, at the same rate through the same broker.

    relay=False: produce to consume, one hop. relay=True: two hops through bench/relay.py, a
    consume-produce process that does nothing else (a forecast makes the same two hops)."""
    import subprocess
    import sys
    import threading

    import numpy as np
    from confluent_kafka import Consumer, Producer

    from stream.kafka import ensure_topics, producer_config

    read_topic = f"{topic}.out" if relay else topic
    ensure_topics(settings, [topic, read_topic])
    reader = Consumer(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )
    reader.subscribe([read_topic])
    while not reader.assignment():
        reader.poll(0.1)
    relay_proc = (
        subprocess.Popen([sys.executable, "-m", "bench.relay", topic, read_topic])
        if relay
        else None
    )
    producer = Producer({**producer_config(settings), "linger.ms": 0})
    try:
        # Connections, metadata and producer ids before timing: a first message, seen through.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            producer.produce(topic, value=b"0")
            producer.flush(10)
            msg = reader.poll(1.0)
            if msg is not None and not msg.error():
                break
        latencies: list[float] = []
        warm_n = int(rate * warmup_s)  # paced like the rest, not timed (as in _latency)
        count = warm_n + int(rate * seconds)
        done = threading.Event()

        def read() -> None:
            while not done.is_set() or len(latencies) < count - warm_n:
                msg = reader.poll(0.05)
                if msg is not None and not msg.error() and msg.value() != b"0":
                    i, sent = (msg.value() or b"0 0").split(b" ")
                    if int(i) >= warm_n:
                        latencies.append(time.time() - float(sent))
                if done.is_set() and time.monotonic() > give_up:
                    break

        give_up = float("inf")
        thread = threading.Thread(target=read, daemon=True)
        _wait_for_quiet()
        thread.start()
        start = time.perf_counter()
        for i in range(count):
            ahead = start + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            producer.produce(
                topic, key=str(i % 100).encode(), value=f"{i} {time.time()!r}".encode()
            )
            producer.poll(0)
        producer.flush(10)
        give_up = time.monotonic() + 10
        done.set()
        thread.join(15)
    finally:
        reader.close()
        if relay_proc is not None:
            relay_proc.terminate()
            relay_proc.wait(15)
    ms = np.array(latencies) * 1000
    return {
        "messages": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def _latency(
    settings: Any, bench_id: str, args: argparse.Namespace, series: Any, logs: Path
) -> dict[str, Any]:
    """Warm the windows, then pace ticks and time each from produce to forecast receipt."""
    import numpy as np
    import orjson
    from confluent_kafka import Consumer, Producer

    from stream.contracts import decode_forecast
    from stream.kafka import ensure_topics, producer_config
    from tools.feed import ticks

    run_id = f"{bench_id}-lat"
    topic = f"bench-{run_id}.ticks"
    env = _env(topic, run_id)
    ensure_topics(
        settings, [topic, env["TICKCAST_TOPICS__FORECASTS"], env["TICKCAST_TOPICS__DEAD_LETTER"]]
    )
    # The first warmup_seconds of pacing are not timed: after the fast warm-up and the quiet
    # wait, the first paced second held one stall of a few hundred ms in some runs here, in
    # which the broker acknowledged the benchmark's own tick produces late too (and its GC log
    # shows no pause). They are reported apart, as the first second after idle, with that
    # acknowledgement time beside them.
    warm_n = int(args.rate * args.warmup_seconds)
    paced_rows = int((args.rate * args.latency_seconds + warm_n) / args.symbols) + 1
    # One full window per symbol before timing, so the service's first forecast produce (metadata,
    # producer id) and the reader's first fetch are not measured as latency.
    warm_rows = settings.window.size
    feed = list(ticks(series.dates, series.prices, args.symbols, "LAT", warm_rows + paced_rows))
    warm, paced = feed[: warm_rows * args.symbols], feed[warm_rows * args.symbols :]

    svc = ServiceProcess(logs / f"bench-{run_id}.log", env)
    svc.start()
    svc.wait_ready()
    sent_at: dict[tuple[str, int], tuple[float, int]] = {}
    latencies: list[float] = []
    sent_times: list[float] = []
    first_second: list[float] = []
    # The paced producer's own acknowledgements in the first second: a broker that is slow for
    # everyone shows here too, whatever the service does.
    first_second_acks: list[float] = []
    done = threading.Event()

    reader = Consumer(
        {
            **settings.kafka.librdkafka_common(),
            "group.id": f"bench-reader-{run_id}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    reader.subscribe([env["TICKCAST_TOPICS__FORECASTS"]])
    while not reader.assignment():
        reader.poll(0.1)

    def read() -> None:
        while not done.is_set() or len(latencies) < len(paced) - warm_n:
            # poll, not consume(n, timeout): consume waits for n messages or the whole timeout,
            # which would be measured as latency.
            msg = reader.poll(0.05)
            if msg is not None and not msg.error():
                now = time.time()
                f = decode_forecast(msg.value())
                sent = sent_at.get((f.symbol, f.ts))
                if sent is None:
                    continue
                t, i = sent
                if i >= warm_n:
                    latencies.append(now - t)
                    sent_times.append(t)
                elif i < args.rate:
                    first_second.append(now - t)
            if done.is_set() and time.time() - last_sent[0] > 10:
                break

    last_sent = [time.time()]
    thread = threading.Thread(target=read, daemon=True)
    # Reading from the start, as a downstream consumer would (it skips the warm-up's forecasts):
    # a reader left unpolled through the warm-up made its first paced seconds a measurement of
    # itself waking up.
    thread.start()
    try:
        # The warm-up goes through the paced producer itself, so its connection, metadata and
        # producer id exist before the first timed tick.
        producer = Producer({**producer_config(settings), "linger.ms": 0})
        for m in warm:
            producer.produce(topic, value=m.value, key=m.key)
            producer.poll(0)
        producer.flush(30)
        time.sleep(2.0)  # let the service apply the warm-up before timing
        settle_s = _wait_for_quiet()
        start = time.perf_counter()
        for i, m in enumerate(paced):
            ahead = start + i / args.rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            sent = time.time()
            sent_at[(m.symbol or "", orjson.loads(m.value)["ts"])] = (sent, i)
            if i < args.rate:
                producer.produce(
                    topic,
                    value=m.value,
                    key=m.key,
                    on_delivery=lambda err, msg, sent=sent: first_second_acks.append(
                        time.time() - sent
                    ),
                )
            else:
                producer.produce(topic, value=m.value, key=m.key)
            producer.poll(0)
        producer.flush(30)
        last_sent[0] = time.time()
        done.set()
        thread.join(30)
    finally:
        reader.close()
        svc.stop()
    ms = np.array(latencies) * 1000
    if not len(ms):
        raise RuntimeError(f"no forecast arrived in the latency phase; see {svc.log_path}")
    # Per second of sending: where the tail comes from (a stall shows as one bad second).
    seconds = (np.array(sent_times) - min(sent_times)).astype(int)
    timeline = [
        {
            "second": int(sec),
            "p50_ms": float(np.median(ms[seconds == sec])),
            "max_ms": float(ms[seconds == sec].max()),
        }
        for sec in np.unique(seconds)
    ]
    first = np.array(first_second or [np.nan]) * 1000
    first_acks = np.array(first_second_acks or [np.nan]) * 1000
    return {
        "ticks": len(paced) - warm_n,
        "warmup_ticks": warm_n,
        "first_second_after_idle": {
            "p50_ms": float(np.median(first)),
            "max_ms": float(first.max()),
            "tick_produce_ack_max_ms": float(first_acks.max()),
        },
        "settle_s": settle_s,
        "measured": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "worst_second_p50_ms": max(t["p50_ms"] for t in timeline),
        "timeline": timeline,
    }

"""`tickcast bench http`: the real `tickcast serve` under a real HTTP load generator.

The generator is wrk (C, epoll, one connection per socket, keep-alive; Debian's package,
installed with apt-get like promtool when missing): a Python client could not offer thousands
of requests a second on two cores without becoming the bottleneck it measures. Over loopback,
on the same machine as the server, Redis and the benchmark, so every figure is a share of the
same two cores.

Scenarios, each for --seconds at --connections, --runs times (medians reported):

  single uncached   POST /v1/predict, every request a new window (generated in wrk's Lua):
                    a cache miss, a model call (batched with whatever else is in flight), a fill
  single cached     POST /v1/predict over a pool of windows the server has already answered
  batch of N        POST /v1/predict/batch with N new windows per request

wrk is a closed loop: each connection sends its next request when the previous answer arrives,
so latency grows with --connections at the same throughput (Little's law); the default 16 keeps
the queue short enough to read the server's latency, not the queue's. p50/p95/p99 come from wrk's
own histogram (its `done` hook), non-2xx answers are counted and fail the run.

The model-only ceiling is measured in the same run, in this process: the served predictor on the
same kind of windows at batch 1 and at the batch size, windows/s. The seeds' published figures
(187 requests/s, 87 ms p95; their code cannot be run as is) are the other reference. The CPU
each request cost the server comes from /proc, so a busy machine shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.config import ModelSettings

#: The seeds' published figures (issue 11): requests/s and p95 of their FastAPI + Keras API.
SEEDS_RPS = 187.0
SEEDS_P95_MS = 87.0
W = 60

# wrk's script: request() builds each body; done() prints one JSON line with wrk's own numbers.
# MODE: "fresh" (new windows per request), "pool" (cycle over windows read from POOL_FILE).
_LUA = r"""
local MODE, PATH, WINDOWS, POOL_FILE = "%(mode)s", "%(path)s", %(windows)d, "%(pool)s"
local counter, pool, pool_i = 0, {}, 0
local id_source = 0  -- in the setup state; each thread's own state gets the global thread_id

function setup(thread)
  id_source = id_source + 1
  thread:set("thread_id", id_source)
end

function init(args)
  math.randomseed(os.time() * 1000 + thread_id)
  if MODE == "pool" then
    for line in io.lines(POOL_FILE) do pool[#pool + 1] = line end
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

local prefix, last, prefix_uses = nil, 0, 0

local function fresh_window()
  -- 59 prices of a random walk (redrawn every 100 windows, so the generator's CPU stays small
  -- beside the server's on the same cores), then a last price stamped with a per-thread counter
  -- in its last digits: never the same window twice, so never a cache hit
  counter = counter + 1
  if prefix == nil or prefix_uses >= 100 then
    local p = 1500 + 800 * math.random()
    local parts = {}
    for i = 1, 59 do
      p = p * (1 + (math.random() - 0.5) * 0.02)
      parts[i] = string.format("%%.4f", p)
    end
    prefix, last, prefix_uses = '{"prices":[' .. table.concat(parts, ",") .. ",", p, 0
  end
  prefix_uses = prefix_uses + 1
  return prefix .. string.format("%%.4f%%06d%%03d", last, counter %% 1000000, thread_id) .. "]}"
end

function request()
  local body
  if MODE == "pool" then
    pool_i = pool_i %% #pool + 1
    body = pool[pool_i]
  elseif WINDOWS == 0 then
    body = fresh_window()
  else
    local ws = {}
    for i = 1, WINDOWS do ws[i] = fresh_window() end
    body = '{"windows":[' .. table.concat(ws, ",") .. ']}'
  end
  return wrk.format(nil, PATH, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%%d,"duration_us":%%d,"non_2xx":%%d,"socket_errors":%%d,' ..
    '"p50_us":%%d,"p95_us":%%d,"p99_us":%%d,"max_us":%%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (medians)")
    parser.add_argument("--seconds", type=int, default=10, help="duration of each scenario")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (-c)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--workers", type=int, default=1, help="tickcast serve processes")
    parser.add_argument("--batch", type=int, default=100, help="windows per batch request")
    parser.add_argument("--pool", type=int, default=2000, help="windows in the cached pool")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")


def _ensure_wrk() -> str:
    from tools.localinfra import _ensure_debian_package

    return _ensure_debian_package("wrk", "wrk", " (the HTTP load generator of `bench http`)")


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (clock ticks of /proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _server_pids(root: int) -> list[int]:
    """The serve process and its children (uvicorn's workers when --workers > 1)."""
    pids = [root]
    for task in Path(f"/proc/{root}/task").iterdir():
        children = task / "children"
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
    return pids


def _post(url: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"tickcast serve exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"tickcast serve not ready in 60 s:\n{log.read_text()}")


def _counters(url: str) -> dict[str, float]:
    """Model calls, windows in them, cache hits and misses so far, from the server's /metrics
    (one process's)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "tickcast_api_inference_batch_size_count": "calls",
        "tickcast_api_inference_batch_size_sum": "windows",
        'tickcast_api_cache_requests_total{result="hit"}': "hits",
        'tickcast_api_cache_requests_total{result="miss"}': "misses",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def _wrk(
    wrk: str, url: str, script: Path, args: argparse.Namespace, server: list[int]
) -> dict[str, Any]:
    # wrk stops with requests in flight, which the server finishes after it: wait for the last
    # scenario's tail, so these counters are this scenario's alone. With several server
    # processes /metrics is whichever one answers: no counters then, and a fixed wait.
    one_process = args.workers == 1
    before = _counters(url) if one_process else {}
    for _ in range(50 if one_process else 0):
        time.sleep(0.1)
        now = _counters(url)
        if now == before:
            break
        before = now
    if not one_process:
        time.sleep(1.0)
    cpu0 = _cpu_seconds(server)
    # wrk's own CPU (the only child that finishes meanwhile): the generator shares the cores
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [
            wrk,
            f"-t{args.wrk_threads}",
            f"-c{args.connections}",
            f"-d{args.seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    cpu = _cpu_seconds(server) - cpu0
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    after = _counters(url) if one_process else {}
    delta = {k: after[k] - before[k] for k in after}
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    raw = json.loads(lines[-1].removeprefix("RESULT "))
    if raw["non_2xx"] or raw["socket_errors"]:
        raise RuntimeError(f"wrk saw errors: {raw}\n{result.stdout}")
    seconds = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "requests_per_s": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1e3,
        "p95_ms": raw["p95_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "server_cpu_us_per_request": cpu / max(raw["requests"], 1) * 1e6,
        "generator_cpu_us_per_request": wrk_cpu / max(raw["requests"], 1) * 1e6,
        # windows per model call: how much the worker's batching of concurrent requests got
        # (with several server processes, one process's share)
        "windows_per_model_call": (delta["windows"] / max(delta["calls"], 1) if delta else None),
        # the scenario's claim, checked: uncached must be 0, cached 1
        "cache_hit_ratio": (
            delta["hits"] / max(delta["hits"] + delta["misses"], 1) if delta else None
        ),
    }


def _or_dash(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.1f}"


def _model_ceiling(model: ModelSettings, batch: int) -> dict[str, float]:
    """windows/s of the served predictor alone, at batch 1 and at `batch` (medians of calls)."""
    import numpy as np

    from stream.predictor import load_predictor

    predictor = load_predictor(model, W)
    rng = np.random.default_rng(5)
    windows = 1900 * np.exp(np.cumsum(rng.normal(0, 0.01, (max(batch, 1), W)), axis=1))
    out: dict[str, float] = {}
    for size in sorted({1, batch}):
        part = windows[:size]
        predictor.predict_batch(part)
        times = []
        deadline = time.perf_counter() + 1.5
        while len(times) < 20 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            predictor.predict_batch(part)
            times.append(time.perf_counter() - t0)
        out[f"batch_{size}_windows_per_s"] = size / statistics.median(times)
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from stream import config
    from stream.predictor import resolve_artifact
    from stream.service import delete_keys, redis_client
    from tools.localinfra import free_port

    console = Console(width=max(Console().width, 110))
    wrk = _ensure_wrk()
    settings = config.load(args.config)
    # The artifact CURRENT names now, by its own folder: a new CURRENT during the run (a
    # `tickcast promote` elsewhere) would make the server hot-reload and miss its cache.
    artifact = resolve_artifact(settings.model.path)
    model = settings.model.model_copy(update={"path": str(artifact)})
    bench_id = uuid.uuid4().hex[:8]
    prefix = f"bench-http-{bench_id}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="tickcast-bench-http-"))
    log = work / "serve.log"
    env = {
        **os.environ,
        "TICKCAST_REDIS__KEY_PREFIX": prefix,
        "TICKCAST_MODEL__PATH": str(artifact),
        "TICKCAST_SERVE__WORKERS": str(args.workers),
        "TICKCAST_SERVE__MAX_BATCH_WINDOWS": str(max(args.batch, 1000)),
    }
    cmd = [sys.executable, "-m", "stream.cli"]
    if args.config:
        cmd += ["--config", str(args.config)]
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [*cmd, "serve", "--port", str(port)], env=env, stdout=log_file, stderr=log_file
        )
    try:
        start_s = _wait_ready(url, proc, log)
        console.print(
            f"tickcast serve ready in {start_s:.2f} s on {url} ({args.workers} worker(s))"
        )
        # the cached pool: answered once, so every request of the scenario is a cache hit
        rng = np.random.default_rng(9)
        pool = 1500 * np.exp(np.cumsum(rng.normal(0, 0.01, (args.pool, W)), axis=1))
        bodies = [json.dumps({"prices": [round(float(x), 4) for x in row]}) for row in pool]
        for i in range(0, len(bodies), 500):
            chunk = "[" + ",".join(bodies[i : i + 500]) + "]"
            _post(url + "/v1/predict/batch", f'{{"windows":{chunk}}}'.encode())
        assert _post(url + "/v1/predict", bodies[0].encode())["cached"] is True
        (work / "pool.txt").write_text("\n".join(bodies) + "\n")

        scenarios = {
            "single uncached": ("fresh", "/v1/predict", 0),
            "single cached": ("pool", "/v1/predict", 0),
            f"batch of {args.batch}": ("fresh", "/v1/predict/batch", args.batch),
        }
        scripts = {}
        for name, (mode, path, windows) in scenarios.items():
            script = work / f"{name.replace(' ', '_')}.lua"
            script.write_text(
                _LUA % {"mode": mode, "path": path, "windows": windows, "pool": work / "pool.txt"}
            )
            scripts[name] = script
        # a short warm-up of every path
        short = argparse.Namespace(**{**vars(args), "seconds": 1})
        server = _server_pids(proc.pid)
        for script in scripts.values():
            _wrk(wrk, url, script, short, server)

        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
        ceilings: list[dict[str, float]] = []
        for r in range(args.runs):
            ceilings.append(_model_ceiling(model, args.batch))
            for name, script in scripts.items():
                result = _wrk(wrk, url, script, args, server)
                runs[name].append(result)
                console.print(
                    f"run {r + 1}/{args.runs} {name:>16}: {result['requests_per_s']:9,.0f} req/s"
                    f"  p50 {result['p50_ms']:6.2f}  p95 {result['p95_ms']:6.2f}"
                    f"  p99 {result['p99_ms']:6.2f} ms"
                    f"  server CPU {result['server_cpu_us_per_request']:5.0f} us/req"
                    f"  {_or_dash(result['windows_per_model_call'])} windows/model call"
                    f"  wrk CPU {result['generator_cpu_us_per_request']:4.0f} us/req"
                )
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        client = redis_client(settings)
        try:
            delete_keys(client, prefix)
        finally:
            client.close()

    def median(values: list[Any]) -> Any:
        known = [v for v in values if v is not None]  # counters exist with one process only
        return float(statistics.median(known)) if known else None

    summary: dict[str, Any] = {}
    for name, results in runs.items():
        summary[name] = {k: median([x[k] for x in results]) for k in results[0]}
    ceiling = {k: median([c[k] for c in ceilings]) for k in ceilings[0]}
    single = summary["single uncached"]
    batch = summary[f"batch of {args.batch}"]
    ratios = {
        "single_uncached_rps_vs_seeds": single["requests_per_s"] / SEEDS_RPS,
        "single_cached_rps_vs_seeds": summary["single cached"]["requests_per_s"] / SEEDS_RPS,
        "seeds_p95_vs_single_uncached_p95": SEEDS_P95_MS / single["p95_ms"],
        "single_uncached_rps_vs_model_batch_1": single["requests_per_s"]
        / ceiling["batch_1_windows_per_s"],
        "batch_windows_per_s_vs_model_batch": batch["requests_per_s"]
        * args.batch
        / ceiling[f"batch_{args.batch}_windows_per_s"],
    }
    target_met = single["requests_per_s"] >= 5000 and single["p99_ms"] <= 10
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)},
        "model": str(artifact),
        "start_to_ready_s": start_s,
        "runs": runs,
        "medians": summary,
        "model_only": ceiling,
        "ratios": ratios,
        "target_5000_rps_p99_10ms_met": target_met,
    }

    table = Table(title=f"tickcast serve, wrk -c{args.connections}, medians of {args.runs} runs")
    columns = ("scenario", "req/s", "windows/s", "p50 ms", "p95 ms", "p99 ms", "CPU us/req")
    for column in (*columns, "windows/call"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for name, s in summary.items():
        per = args.batch if name.startswith("batch") else 1
        table.add_row(
            name,
            f"{s['requests_per_s']:,.0f}",
            f"{s['requests_per_s'] * per:,.0f}",
            f"{s['p50_ms']:.2f}",
            f"{s['p95_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['server_cpu_us_per_request']:.0f}",
            _or_dash(s["windows_per_model_call"]).strip(),
        )
    console.print(table)
    console.print(
        f"model only: {ceiling['batch_1_windows_per_s']:,.0f} windows/s at batch 1,"
        f" {ceiling[f'batch_{args.batch}_windows_per_s']:,.0f} at batch {args.batch}"
    )
    console.print(
        f"single uncached: {ratios['single_uncached_rps_vs_seeds']:.1f}x the seeds' 187 req/s,"
        f" p95 {ratios['seeds_p95_vs_single_uncached_p95']:.0f}x lower than their 87 ms;"
        f" {ratios['single_uncached_rps_vs_model_batch_1']:.0%} of the model alone at batch 1;"
        f" batches: {ratios['batch_windows_per_s_vs_model_batch']:.0%} of the model alone at"
        f" batch {args.batch}"
    )
    console.print(
        "target >= 5,000 single-window req/s with p99 <= 10 ms: "
        + ("met" if target_met else "NOT met")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"http-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    console.print(f"results: {path}")
    shutil.rmtree(work, ignore_errors=True)
    return 0

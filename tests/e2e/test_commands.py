"""The user-facing commands as a user runs them: replay, tail and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream.contracts import (
    Forecast,
    Record,
    Source,
    decode_batch,
    encode_forecast,
)
from tests.e2e.harness import ROOT, produce, read_topic
from tools import localinfra

pytestmark = pytest.mark.e2e


def _tickcast(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_replay_publishes_every_row_per_symbol_and_the_bad_share(
    kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    csv = tmp_path / "prices.csv"
    csv.write_text(
        "date,price\n" + "".join(f"2020-01-{d:02d},{1500 + d}.5\n" for d in range(1, 21))
    )
    topic = topic_factory("ticks", 3)
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = _tickcast(
        [
            "replay",
            "--csv",
            str(csv),
            "--symbols",
            "3",
            "--bad-fraction",
            "0.25",
            "--topic",
            topic,
            "--quiet",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()  # "replayed N ticks and M malformed messages into T"
    good, bad = int(words[1]), int(words[4])
    assert good == 60 and bad > 0
    records = read_topic(kafka_bootstrap, topic, good + bad, settle=1.0)
    assert len(records) == good + bad
    ticks, rejected = decode_batch([Record("ticks", 0, 0, k, v) for k, v, _ in records], 65_536)
    assert len(ticks) == good and len(rejected) == bad
    assert {t.symbol for t in ticks} == {"XAUUSD", "XAUUSD.001", "XAUUSD.002"}
    first = [t.price for t in ticks if t.symbol == "XAUUSD"]
    assert first == [1500 + d + 0.5 for d in range(1, 21)]  # the series itself, in order


def test_tail_prints_one_readable_line_per_forecast(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("forecasts")
    forecasts = [
        Forecast(
            "XAUUSD",
            1714521600000 + i * 86_400_000,
            1,
            2001.0 + i,
            1990.0,
            2012.0,
            0.8,
            2000.0 + i,
            "abc123",
            "f" * 32,
            i == 1,
            Source("ticks", 0, 100 + i),
            1,
        )
        for i in range(3)
    ]
    produce(kafka_bootstrap, topic, [(f.symbol.encode(), encode_forecast(f)) for f in forecasts])
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = _tickcast(["tail", "--from-beginning", "--max", "3", "--topic", topic], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("XAUUSD") and "2024-05-01" in lines[0] and "2001.00" in lines[0]
    assert "80% [1990.00, 2012.00]" in lines[0] and "model abc123" in lines[0]
    assert "cached" in lines[1] and "cached" not in lines[0]
    raw = _tickcast(["tail", "--from-beginning", "--max", "1", "--json", "--topic", topic], env)
    assert orjson.loads(raw.stdout)["source"] == {"topic": "ticks", "partition": 0, "offset": 100}


def test_demo_loses_nothing_across_its_kill_and_cleans_up(
    kafka_bootstrap: str, redis_url: str
) -> None:
    env = {
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TICKCAST_REDIS__URL": redis_url,
        "COLUMNS": "200",  # one summary row per line
    }
    proc = _tickcast(["demo", "--symbols", "2", "--show", "3"], env, timeout=300)
    # Exit 0 means: every expected forecast arrived, the repeats after the SIGKILL were identical,
    # and the consumer stopped cleanly on SIGTERM.
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "none" in proc.stdout and "all identical to the first" in proc.stdout
    assert "MASE" in proc.stdout
    from confluent_kafka.admin import AdminClient

    left = [
        t
        for t in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
        if t.startswith("demo-")
    ]
    assert left == []


def test_bench_e2e_reports_every_number_and_cleans_up(
    kafka_bootstrap: str, redis_url: str, tmp_path: Path
) -> None:
    """A tiny run of `tickcast bench e2e`: it must keep working, not be fast."""
    env = {
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TICKCAST_REDIS__URL": redis_url,
        "COLUMNS": "200",
    }
    args = ["bench", "e2e", "--ticks", "3000", "--symbols", "10", "--runs", "1"]
    args += ["--rate", "200", "--latency-seconds", "2", "--warmup-seconds", "1"]
    args += ["--guarantee", "exactly-once", "--out", str(tmp_path)]
    proc = _tickcast(args, env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [saved] = tmp_path.glob("e2e-*.json")
    result = orjson.loads(saved.read_bytes())
    assert result["windows"] == 10 * (300 - 59)  # every full window of every symbol
    [run] = result["runs"]
    assert run["forecasts_per_s"] > 0 and run["ready_s"] > 0 and run["peak_rss_mb"] > 10
    assert set(run["stages"]) >= {"decode", "window", "cache", "inference", "produce"}
    # The outside view: every forecast seen by a read_committed reader, timed from the launch.
    outside = run["outside"]
    assert result["guarantee"] == "exactly-once" and result["model_cpu_us_per_window"] > 0
    assert 0 < outside["launch_to_ready_s"] < outside["launch_to_last_forecast_s"]
    assert 0 < outside["launch_to_first_forecast_s"] <= outside["launch_to_last_forecast_s"]
    assert outside["forecasts_per_s"] == pytest.approx(
        result["windows"] / outside["launch_to_last_forecast_s"]
    )
    whole = outside["thread_cpu_us_per_forecast"]
    assert outside["process_cpu_us_per_forecast"] == pytest.approx(sum(whole.values()))
    # from the launch: more than what the threads spent after ready
    assert whole["service loop thread"] > run["cpu_us_per_forecast"]["service loop thread"]
    cpu = run["cpu_us_per_forecast"]
    assert cpu["service loop thread"] > 0 and cpu["service model thread and others"] > 0
    for name in localinfra.running():  # the local services' CPU is counted too
        assert cpu[f"{name} (local)"] > 0
    latency = result["latency"]
    # The paced warm-up (200 ticks) is reported apart, never in the timed figures.
    assert latency["warmup_ticks"] == 200 and latency["measured"] == latency["ticks"]
    first = latency["first_second_after_idle"]
    assert 0 < first["p50_ms"] <= first["max_ms"] and first["tick_produce_ack_max_ms"] > 0
    # 3,000 ticks may be relayed whole before the first look (then null); never zero
    relayed = result["relay_throughput"]["messages_per_s"]
    assert relayed is None or relayed > 0
    for floor in (result["kafka_hop"], result["relay"]):
        assert floor["messages"] > 0 and 0 < floor["p50_ms"] <= floor["p99_ms"]
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith("bench-")]


def _tickcast_lines(stderr: str) -> list[str]:
    """stderr without librdkafka's own log lines (`%3|...`), whose routing is separate work."""
    return [line for line in stderr.splitlines() if line and not line.startswith("%")]


def test_replay_with_kafka_down_is_one_line_naming_the_address() -> None:
    dead = f"127.0.0.1:{localinfra.free_port()}"
    proc = _tickcast(
        ["replay", "--quiet", "--rows", "5"],
        {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": dead},
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    [line] = _tickcast_lines(proc.stderr)
    assert line.startswith("tickcast replay: ") and dead in line


def _groups(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the answer is in
    listed = admin.list_consumer_groups().result(timeout=30)
    assert not listed.errors, listed.errors
    return {g.group_id for g in listed.valid}


def _a_forecast(i: int) -> Forecast:
    return Forecast(
        "XAUUSD",
        1714521600000 + i * 86_400_000,
        1,
        2001.0 + i,
        1990.0,
        2012.0,
        0.8,
        2000.0 + i,
        "abc123",
        "f" * 32,
        False,
        Source("ticks", 0, 100 + i),
        1,
    )


def test_tail_skips_what_is_not_a_forecast_and_leaves_no_group(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("forecasts", 2)
    messages = [
        (b"XAUUSD", encode_forecast(_a_forecast(0))),
        (b"XAUUSD", b'{"symbol": "XAUUSD", "price": 1.5, "ts": 1}'),  # a tick, not a forecast
        (b"XAUUSD", b"\xff not json"),
        (b"XAUUSD", encode_forecast(_a_forecast(1))),
    ]
    produce(kafka_bootstrap, topic, messages)
    before = _groups(kafka_bootstrap)
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = _tickcast(["tail", "--from-beginning", "--max", "2", "--topic", topic], env)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2
    notes = [ln for ln in _tickcast_lines(proc.stderr) if "skipped" in ln]
    assert len(notes) == 2 and all(f"{topic}[" in n and "not a forecast" in n for n in notes)
    new_groups = _groups(kafka_bootstrap) - before
    assert not [g for g in new_groups if g.startswith("tickcast-tail")], new_groups


def test_tail_from_the_end_sees_only_what_comes_after_it_starts(
    kafka_bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    import threading
    import time

    topic = topic_factory("forecasts", 2)
    produce(kafka_bootstrap, topic, [(b"XAUUSD", encode_forecast(_a_forecast(0)))])
    later = threading.Timer(
        8.0,  # the command imports and connects first
        lambda: produce(kafka_bootstrap, topic, [(b"XAUUSD", encode_forecast(_a_forecast(5)))]),
    )
    later.start()
    started = time.monotonic()
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = _tickcast(["tail", "--max", "1", "--idle-timeout", "30", "--topic", topic], env)
    later.join()
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.strip().splitlines()
    assert "2024-05-06" in line  # the one produced later (day 5), not the earlier one
    assert time.monotonic() - started < 40


def test_tail_with_a_group_reads_as_that_group(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique: str
) -> None:
    topic = topic_factory("forecasts", 1)
    produce(kafka_bootstrap, topic, [(b"XAUUSD", encode_forecast(_a_forecast(i))) for i in (0, 1)])
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    group = f"tail-{unique}"
    args = ["tail", "--from-beginning", "--max", "2", "--topic", topic, "--group", group]
    proc = _tickcast(args, env)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 2
    assert group in _groups(kafka_bootstrap)


def test_tail_of_an_unknown_topic_is_one_line(kafka_bootstrap: str, unique: str) -> None:
    topic = f"nosuchtopic-{unique}"
    env = {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap}
    proc = _tickcast(["tail", "--topic", topic], env, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = _tickcast_lines(proc.stderr)
    assert line.startswith("tickcast tail: ") and topic in line and "does not exist" in line
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert topic not in topics  # asking did not create it


def test_tail_with_kafka_down_gives_up_within_its_wait_naming_the_address() -> None:
    import time

    dead = f"127.0.0.1:{localinfra.free_port()}"
    started = time.monotonic()
    proc = _tickcast(
        ["tail", "--wait", "3"], {"TICKCAST_KAFKA__BOOTSTRAP_SERVERS": dead}, timeout=60
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    [line] = _tickcast_lines(proc.stderr)
    assert line.startswith("tickcast tail: ") and dead in line
    assert time.monotonic() - started < 30

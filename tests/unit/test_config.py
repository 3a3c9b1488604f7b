"""Settings: file, environment overrides, and one clear message naming the bad key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stream import config
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_matches_the_contract_defaults() -> None:
    s = config.load(ROOT / "config.toml", environ={})
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.kafka.group_id == "tickcast"
    assert (s.topics.ticks, s.topics.forecasts, s.topics.dead_letter) == (
        "ticks",
        "forecasts",
        "ticks.dlq",
    )
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.window.size == 60
    assert s.model.backend == "onnx"
    assert s.processing.guarantee == "at-least-once"
    assert s.processing.max_message_bytes == 65536
    assert (s.metrics.host, s.metrics.port) == ("127.0.0.1", 9400)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "TICKCAST_TOPICS__TICKS": "t1",
        "TICKCAST_WINDOW__SIZE": "30",
    }
    s = config.load(ROOT / "config.toml", environ=env)
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.topics.ticks == "t1"
    assert s.window.size == 30


def test_settings_are_frozen() -> None:
    s = config.load(ROOT / "config.toml", environ={})
    with pytest.raises(Exception, match="frozen"):
        s.kafka.group_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ("[kafka]\nbootstrap_server = 'x:1'\n", {}, "kafka.bootstrap_server"),
        ("[kafak]\n", {}, "[kafak]"),
        ("[window]\nsize = 'sixty'\n", {}, "window.size"),
        ("", {"TICKCAST_WINDOW__SIZE": "abc"}, "TICKCAST_WINDOW__SIZE"),
        ("", {"TICKCAST_PROCESSING__GUARANTEE": "most-once"}, "processing.guarantee"),
        ("", {"TICKCAST_KAFKA__NOPE": "1"}, "kafka.nope"),
        ("[redis]\npassword = 'hunter2'\n", {}, "TICKCAST_REDIS__PASSWORD"),
        ("[redis]\nurl = 'http://x'\n", {}, "redis.url"),
        ("[metrics]\nport = 70000\n", {}, "metrics.port"),
    ],
)
def test_bad_setting_names_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], named: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ=env)
    assert named in str(err.value)
    assert "hunter2" not in str(err.value)


def test_secret_from_environment_is_never_shown() -> None:
    s = config.load(ROOT / "config.toml", environ={"TICKCAST_REDIS__PASSWORD": "hunter2"})
    assert s.redis.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_cli_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[window]\nsise = 60\n")
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "--config", str(bad), "run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "window.sise" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_future_bound_and_dead_letter_size_defaults_from_the_shipped_file() -> None:
    s = config.load(ROOT / "config.toml", environ={})
    assert s.window.max_future_ms == 86_400_000  # one day
    assert s.processing.dead_letter_max_bytes == 0  # derived from the broker
    assert config.Settings().window.max_future_ms == 86_400_000  # without a file too
    assert config.Settings().processing.dead_letter_max_bytes == 0


def test_future_bound_and_dead_letter_size_from_the_environment() -> None:
    env = {
        "TICKCAST_WINDOW__MAX_FUTURE_MS": "60000",
        "TICKCAST_PROCESSING__DEAD_LETTER_MAX_BYTES": "1048576",
    }
    s = config.load(ROOT / "config.toml", environ=env)
    assert s.window.max_future_ms == 60_000
    assert s.processing.dead_letter_max_bytes == 1_048_576


def test_the_api_deadline_is_a_setting() -> None:
    assert config.load(ROOT / "config.toml", environ={}).serve.deadline_s == 0.5
    s = config.load(ROOT / "config.toml", environ={"TICKCAST_SERVE__DEADLINE_S": "0.2"})
    assert s.serve.deadline_s == 0.2


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TICKCAST_WINDOW__MAX_FUTURE_MS": "-1"}, "window.max_future_ms"),
        ({"TICKCAST_WINDOW__MAX_FUTURE_MS": "1.5"}, "window.max_future_ms"),
        ({"TICKCAST_WINDOW__MAX_FUTURE_MS": "soon"}, "window.max_future_ms"),
        ({"TICKCAST_PROCESSING__DEAD_LETTER_MAX_BYTES": "-1"}, "processing.dead_letter_max_bytes"),
        ({"TICKCAST_PROCESSING__DEAD_LETTER_MAX_BYTES": "100"}, "processing.dead_letter_max_bytes"),
        ({"TICKCAST_PROCESSING__DEAD_LETTER_MAX_BYTES": "1MB"}, "processing.dead_letter_max_bytes"),
        ({"TICKCAST_SERVE__DEADLINE_S": "0"}, "serve.deadline_s"),
        ({"TICKCAST_SERVE__DEADLINE_S": "nan"}, "serve.deadline_s"),
    ],
)
def test_bad_future_bound_or_dead_letter_size_names_the_key(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(ROOT / "config.toml", environ=env)
    assert named in str(err.value)
    assert "unknown key" not in str(err.value)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TICKCAST_PROCESING__MAX_BATCH": "10"}, "TICKCAST_PROCESING__MAX_BATCH"),
        ({"TICKCAST_PROCESSING__MAX_BACTH": "10"}, "processing.max_bacth"),
        ({"TICKCAST_PROCESSING_MAX_BATCH": "10"}, "TICKCAST_PROCESSING_MAX_BATCH"),
        ({"TICKCAST_WINDOW": "60"}, "TICKCAST_WINDOW"),
        ({"tickcast_metrics__prot": "9401"}, "metrics.prot"),
        ({"TICKCAST_LOCAL_DRI": "/tmp"}, "TICKCAST_LOCAL_DRI"),
    ],
)
def test_a_tickcast_variable_naming_no_setting_is_an_error(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(ROOT / "config.toml", environ=env)
    assert named in str(err.value)


def test_tooling_variables_are_not_settings_and_not_errors() -> None:
    env = {name: "1" for name in config.TOOLING_ENV}
    s = config.load(ROOT / "config.toml", environ={**env, "TICKCAST_PROCESSING__MAX_BATCH": "10"})
    assert s.processing.max_batch == 10


def _tickcast_names_in_the_repository() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    names: set[str] = set()
    for rel in files:
        path = ROOT / rel
        # this file spells wrong names on purpose
        if rel == "tests/unit/test_config.py" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        # a name ending in "_" is a prefix in prose (TICKCAST_MODEL__*), not a variable
        names.update(re.findall(r"\bTICKCAST_[A-Z0-9_]*[A-Z0-9]\b", text))
    return names


#: Misspelt names that tests and the README use as examples of an error.
WRONG_ON_PURPOSE = {
    "TICKCAST_KAFKA__NOPE",
    "TICKCAST_PROCESING__MAX_BATCH",
    "TICKCAST_KAFKA__CLIENT",
}


def test_every_tickcast_variable_in_the_repository_is_a_setting_or_tooling() -> None:
    names = _tickcast_names_in_the_repository()
    assert "TICKCAST_LOCAL_KAFKA_PORT" in names  # the scan sees the tooling
    for name in sorted(names):
        if name in config.TOOLING_ENV:
            continue
        if name.startswith("TICKCAST_KAFKA__CLIENT__"):
            config._check_env({name: "x"})  # a librdkafka property: librdkafka checks its value
            continue
        section_key = name.removeprefix("TICKCAST_").lower().split("__", 1)
        secret = tuple(section_key) in config.SECRET_KEYS
        if name in WRONG_ON_PURPOSE or secret:
            continue  # secrets have no value in the file to borrow
        config.load(ROOT / "config.toml", environ={name: _a_valid_value(name)})


def _a_valid_value(name: str) -> str:
    """A value the setting accepts: its default, read from the settings model."""
    section, key = name.removeprefix("TICKCAST_").lower().split("__", 1)
    value = getattr(getattr(config.Settings(), section), key)
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[processing]\nmax_batch = '10'\n", "processing.max_batch"),
        ("[metrics]\nport = '9400'\n", "metrics.port"),
        ("[cache]\nenabled = 'yes'\n", "cache.enabled"),
        ("[cache]\nenabled = 1\n", "cache.enabled"),
        ("[topics]\nticks = 7\n", "topics.ticks"),
        ("[kafka]\nsasl_mechanism = 'PLAN'\n", "kafka.sasl_mechanism"),
    ],
)
def test_file_values_must_have_their_keys_type(tmp_path: Path, toml: str, named: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(path, environ={})
    assert named in str(err.value) and str(path) in str(err.value)


def test_a_float_key_takes_an_integer_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[processing]\nshutdown_timeout_s = 5\n")
    assert config.load(path, environ={}).processing.shutdown_timeout_s == 5.0


def test_sasl_mechanism_typo_is_one_line_naming_the_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "--config", str(ROOT / "config.toml"), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "TICKCAST_KAFKA__SASL_MECHANISM": "SCRAM-SHA-265"},
    )
    assert proc.returncode == 2
    assert "kafka.sasl_mechanism" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.upper().startswith("TICKCAST_")}

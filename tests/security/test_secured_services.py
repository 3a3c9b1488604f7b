"""The real `tickcast run` against a secured broker (SASL_SSL with SCRAM or OAUTHBEARER/OIDC, the
test CA and a client certificate; SSL with the client certificate alone) and a TLS-only Redis
with an ACL user; and each wrong setting refused at start in one line.

The brokers and certificates are this module's own (conftest.py); one broker start serves every
test here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from stream import config
from stream.contracts import Forecast
from tests.e2e.harness import ROOT, Service, expected_windows, gold_feed
from tests.security.conftest import SecureKafka, SecureRedis

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SYMBOLS, ROWS = 2, 80


def _client_conf(env: dict[str, str]) -> dict[str, Any]:
    """The librdkafka settings tickcast derives from `env`: the tests' own clients speak to the
    secured listener exactly as the service does."""
    return config.load(ROOT / "config.toml", environ=env).kafka.librdkafka_common()


@pytest.fixture
def topics(secure_kafka: SecureKafka) -> Iterator[dict[str, str]]:
    unique = uuid.uuid4().hex[:8]
    names = {"ticks": f"ticks-{unique}", "forecasts": f"fc-{unique}", "dlq": f"dlq-{unique}"}
    admin = AdminClient(_client_conf(secure_kafka.env()))
    for fut in admin.create_topics(
        [NewTopic(n, num_partitions=2, replication_factor=1) for n in names.values()]
    ).values():
        fut.result(timeout=30)
    yield names


def _produce(conf: dict[str, Any], topic: str, feed: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer({**conf, "enable.idempotence": True})
    for key, value in feed:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _read(conf: dict[str, Any], topic: str, expect: int, timeout: float = 60.0) -> list[Forecast]:
    consumer = Consumer(
        {
            **conf,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[Forecast] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for m in consumer.consume(500, timeout=0.5):
                if m.error() is None and m.value():
                    got.append(Forecast(**_forecast_fields(m.value() or b"")))
    finally:
        consumer.close()
    return got


def _forecast_fields(value: bytes) -> dict[str, Any]:
    obj = orjson.loads(value)
    return {name: obj[name] for name in Forecast.__struct_fields__ if name in obj}


def _run_through(
    env: dict[str, str], kafka_env: dict[str, str], topics: dict[str, str], tmp_path: Path
) -> tuple[list[Forecast], Service, int]:
    """Feed the gold series through a `tickcast run` started with `env`; the forecasts read back
    over `kafka_env`'s connection, the service, and its exit code after SIGTERM."""
    feed = gold_feed(SYMBOLS, ROWS)
    windows = expected_windows(feed)
    conf = _client_conf(kafka_env)
    svc = Service(
        tmp_path / "run.log",
        {
            **env,
            "TICKCAST_KAFKA__GROUP_ID": f"g-{topics['ticks']}",
            "TICKCAST_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "TICKCAST_TOPICS__TICKS": topics["ticks"],
            "TICKCAST_TOPICS__FORECASTS": topics["forecasts"],
            "TICKCAST_TOPICS__DEAD_LETTER": topics["dlq"],
        },
    )
    try:
        svc.start()
        _produce(conf, topics["ticks"], feed)
        forecasts = _read(conf, topics["forecasts"], len(windows))
        assert {(f.symbol, f.ts) for f in forecasts} == set(windows), svc.tail(20)
        svc.signal(signal.SIGTERM)
        code = svc.wait(30)
    finally:
        svc.kill_if_running()
    return forecasts, svc, code


def test_tickcast_run_through_sasl_ssl_with_scram_and_a_client_certificate(
    secure_kafka: SecureKafka,
    topics: dict[str, str],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    env = {
        **secure_kafka.env(),
        "TICKCAST_REDIS__URL": redis_url,
        "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
    }
    forecasts, svc, code = _run_through(env, secure_kafka.env(), topics, tmp_path)
    assert len(forecasts) == SYMBOLS * (ROWS - 59)
    assert code == 0, svc.tail(20)
    log = svc.log_path.read_text()
    assert "Traceback" not in log
    assert secure_kafka.password not in log
    # `tickcast tail` reads them over the same secured listener
    options = ["--from-beginning", "--json", "--max", str(len(forecasts)), "--idle-timeout", "20"]
    tail = subprocess.run(
        [sys.executable, "-m", "stream.cli", "tail", *options],
        env={**os.environ, **env, "TICKCAST_TOPICS__FORECASTS": topics["forecasts"]},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    printed = [orjson.loads(line) for line in tail.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == len(forecasts)


def test_scram_sha_256_and_the_passthrough_table(
    secure_kafka: SecureKafka,
    topics: dict[str, str],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """The other SCRAM user, and the CA given as a raw librdkafka property (DESIGN.md's
    TICKCAST_KAFKA__CLIENT__SSL_CA_LOCATION) instead of the typed key."""
    kafka_env = secure_kafka.env("SCRAM-SHA-256")
    ca = kafka_env.pop("TICKCAST_KAFKA__SSL_CA_LOCATION")
    kafka_env["TICKCAST_KAFKA__CLIENT__SSL_CA_LOCATION"] = ca
    env = {
        **kafka_env,
        "TICKCAST_REDIS__URL": redis_url,
        "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
    }
    forecasts, svc, code = _run_through(env, kafka_env, topics, tmp_path)
    assert len(forecasts) == SYMBOLS * (ROWS - 59)
    assert code == 0, svc.tail(20)


def test_tickcast_run_through_mutual_tls(
    secure_kafka: SecureKafka,
    topics: dict[str, str],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """SSL without SASL: the CA and a client certificate with its key."""
    env = {
        **secure_kafka.mtls_env(),
        "TICKCAST_REDIS__URL": redis_url,
        "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
    }
    forecasts, svc, code = _run_through(env, secure_kafka.mtls_env(), topics, tmp_path)
    assert len(forecasts) == SYMBOLS * (ROWS - 59)
    assert code == 0, svc.tail(20)


def test_tickcast_run_through_oauthbearer_with_oidc_client_credentials(
    secure_kafka: SecureKafka,
    topics: dict[str, str],
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """librdkafka fetches the token at the identity provider's endpoint with the client's id and
    secret; the broker checks the JWT against the provider's keys."""
    issued = secure_kafka.idp.issued
    env = {
        **secure_kafka.oidc_env(),
        "TICKCAST_REDIS__URL": redis_url,
        "TICKCAST_REDIS__KEY_PREFIX": key_prefix,
    }
    forecasts, svc, code = _run_through(env, secure_kafka.oidc_env(), topics, tmp_path)
    assert len(forecasts) == SYMBOLS * (ROWS - 59)
    assert code == 0, svc.tail(20)
    assert secure_kafka.idp.issued > issued  # the tokens came from the provider
    assert secure_kafka.idp.client_secret not in svc.log_path.read_text()


def test_tickcast_run_with_redis_over_tls_as_an_acl_user(
    secure_redis: SecureRedis,
    secure_kafka: SecureKafka,
    topics: dict[str, str],
    tmp_path: Path,
) -> None:
    env = {**secure_kafka.env(), **secure_redis.env()}
    forecasts, svc, code = _run_through(env, secure_kafka.env(), topics, tmp_path)
    assert len(forecasts) == SYMBOLS * (ROWS - 59)
    assert code == 0, svc.tail(20)
    client = secure_redis.client()
    try:
        windows = client.keys(f"{secure_redis.key_prefix}:win:*")
    finally:
        client.close()
    assert len(windows) == SYMBOLS  # the windows live in the TLS Redis, under the user's prefix
    assert secure_redis.password not in svc.log_path.read_text()


def _refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "run"],
        env={**os.environ, **env, "TICKCAST_METRICS__ENABLED": "false"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _only_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"TICKCAST_KAFKA__SASL_PASSWORD": "not-the-password"},
            "SASL authentication failed; check kafka.sasl_mechanism, kafka.sasl_username and"
            " kafka.sasl_password",
        ),
        ("untrusted-ca", "TLS handshake failed; check kafka.ssl_ca_location"),
        ("plaintext", "the broker does not speak PLAINTEXT on this port; check"),
        (
            "oidc-secret",
            "OAUTHBEARER token not obtained; check kafka.sasl_oauthbearer_token_endpoint_url,"
            " kafka.sasl_oauthbearer_client_id and kafka.sasl_oauthbearer_client_secret",
        ),
    ],
)
def test_a_wrong_kafka_setting_is_one_line_at_start(
    secure_kafka: SecureKafka, redis_url: str, change: dict[str, str] | str, expected: str
) -> None:
    env = {**secure_kafka.env(), "TICKCAST_REDIS__URL": redis_url}
    if change == "untrusted-ca":
        env["TICKCAST_KAFKA__SSL_CA_LOCATION"] = str(secure_kafka.pki.other_ca)
    elif change == "oidc-secret":
        env = {
            **secure_kafka.oidc_env(TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET="wrong"),
            "TICKCAST_REDIS__URL": redis_url,
        }
    elif change == "plaintext":
        env = {
            "TICKCAST_KAFKA__BOOTSTRAP_SERVERS": secure_kafka.bootstrap,
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT",
            "TICKCAST_REDIS__URL": redis_url,
        }
    else:
        assert isinstance(change, dict)
        env.update(change)
    proc = _refused(env)
    line = _only_line(proc)
    assert line.startswith(f"tickcast run: cannot reach Kafka at {secure_kafka.bootstrap}")
    assert expected in line, proc.stderr
    assert secure_kafka.password not in proc.stderr + proc.stdout


def test_a_wrong_redis_password_is_one_line_at_start(
    secure_redis: SecureRedis, secure_kafka: SecureKafka
) -> None:
    env = {**secure_kafka.env(), **secure_redis.env(TICKCAST_REDIS__PASSWORD="wrong")}
    proc = _refused(env)
    line = _only_line(proc)
    assert line.startswith(f"tickcast run: cannot reach Redis at {secure_redis.url} (redis.url)")
    assert "password" in line.lower() or "auth" in line.lower(), line
    assert secure_redis.password not in proc.stderr

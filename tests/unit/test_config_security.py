"""Kafka and Redis security settings: typed keys, the `[kafka.client]` passthrough, combinations
that cannot work refused with one message naming the key, secrets from the environment only and
never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream import config
from stream.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-s3cr3t"


def _load(env: dict[str, str], toml: str | None = None, tmp: Path | None = None) -> config.Settings:
    path = ROOT / "config.toml"
    if toml is not None:
        assert tmp is not None
        path = tmp / "c.toml"
        path.write_text(toml)
    return config.load(path, environ=env)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """Files standing in for a CA, a certificate and a key (the settings check they exist; the
    TLS tests in tests/security use real ones)."""
    out = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("-----BEGIN X-----\n")
        out[name] = str(path)
    return out


def test_scram_over_tls_with_a_ca_and_client_certificate(pem: dict[str, str]) -> None:
    s = _load(
        {
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "TICKCAST_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "TICKCAST_KAFKA__SASL_USERNAME": "tickcast",
            "TICKCAST_KAFKA__SASL_PASSWORD": SECRET,
            "TICKCAST_KAFKA__SSL_CA_LOCATION": pem["ca"],
            "TICKCAST_KAFKA__SSL_CERTIFICATE_LOCATION": pem["cert"],
            "TICKCAST_KAFKA__SSL_KEY_LOCATION": pem["key"],
            "TICKCAST_KAFKA__SSL_KEY_PASSWORD": SECRET,
        }
    )
    conf = s.kafka.librdkafka_common()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("tickcast", SECRET)
    assert conf["ssl.ca.location"] == pem["ca"]
    assert conf["ssl.certificate.location"] == pem["cert"]
    assert conf["ssl.key.location"] == pem["key"]
    assert conf["ssl.key.password"] == SECRET
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())


def test_oauthbearer_with_oidc_client_credentials() -> None:
    s = _load(
        {
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "TICKCAST_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/token",
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "tickcast",
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": SECRET,
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_SCOPE": "kafka",
        }
    )
    conf = s.kafka.librdkafka_common()
    assert conf["sasl.oauthbearer.method"] == "oidc"
    assert conf["sasl.oauthbearer.token.endpoint.url"] == "https://idp.example/token"
    assert conf["sasl.oauthbearer.client.id"] == "tickcast"
    assert conf["sasl.oauthbearer.client.secret"] == SECRET
    assert conf["sasl.oauthbearer.scope"] == "kafka"
    assert "sasl.username" not in conf
    assert SECRET not in repr(s)


def test_endpoint_identification_can_be_turned_off() -> None:
    s = _load(
        {
            "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SSL",
            "TICKCAST_KAFKA__SSL_ENDPOINT_IDENTIFICATION": "false",
        }
    )
    assert s.kafka.librdkafka_common()["ssl.endpoint.identification.algorithm"] == "none"


def test_plaintext_sends_no_security_properties() -> None:
    conf = _load({}).kafka.librdkafka_common()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "client.id": "tickcast",
        "security.protocol": "PLAINTEXT",
    }


def test_passthrough_from_the_file_and_the_environment(tmp_path: Path, pem: dict[str, str]) -> None:
    toml = (
        "[kafka]\nsecurity_protocol = 'SSL'\n"
        "[kafka.client]\n"
        "socket.keepalive.enable = true\n"  # TOML reads this as nested tables
        "'fetch.wait.max.ms' = 20\n"
        "'ssl.cipher.suites' = 'HIGH'\n"
    )
    env = {
        "TICKCAST_KAFKA__CLIENT__SSL_CA_LOCATION": pem["ca"],  # DESIGN.md's example
        "TICKCAST_KAFKA__CLIENT__SSL_CIPHER_SUITES": "ECDHE",  # the environment wins
        "TICKCAST_KAFKA__CLIENT__SSL_KEYSTORE_PASSWORD": SECRET,
    }
    s = _load(env, toml, tmp_path)
    conf = s.kafka.librdkafka_common()
    assert conf["socket.keepalive.enable"] == "true"
    assert conf["fetch.wait.max.ms"] == "20"
    assert conf["ssl.cipher.suites"] == "ECDHE"
    assert conf["ssl.ca.location"] == pem["ca"]
    assert conf["ssl.keystore.password"] == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s.model_dump())


@pytest.mark.parametrize(
    ("env", "named"),
    [
        # SASL without credentials, or on a protocol without SASL
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TICKCAST_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
                "TICKCAST_KAFKA__SASL_USERNAME": "u",
            },
            "kafka.sasl_password is empty (set TICKCAST_KAFKA__SASL_PASSWORD)",
        ),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TICKCAST_KAFKA__SASL_MECHANISM": "PLAIN",
                "TICKCAST_KAFKA__SASL_PASSWORD": SECRET,
            },
            "kafka.sasl_username is empty",
        ),
        ({"TICKCAST_KAFKA__SASL_MECHANISM": "PLAIN"}, "kafka.sasl_mechanism is PLAIN but"),
        ({"TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "kafka.sasl_mechanism is not set"),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TICKCAST_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
            },
            "kafka.sasl_oauthbearer_token_endpoint_url is empty",
        ),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TICKCAST_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
                "TICKCAST_KAFKA__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp/token",
                "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_ID": "c",
            },
            "kafka.sasl_oauthbearer_client_secret is empty",
        ),
        # TLS files: on a protocol without TLS, a certificate without its key, a missing CA
        (
            {"TICKCAST_KAFKA__SSL_CA_LOCATION": "{ca}"},
            "kafka.ssl_ca_location is set but kafka.security_protocol is PLAINTEXT",
        ),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SSL",
                "TICKCAST_KAFKA__SSL_CERTIFICATE_LOCATION": "{cert}",
            },
            "kafka.ssl_certificate_location is set without kafka.ssl_key_location",
        ),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SSL",
                "TICKCAST_KAFKA__CLIENT__SSL_KEY_LOCATION": "{key}",
            },
            "kafka.client.ssl.key.location is set without kafka.ssl_certificate_location",
        ),
        (
            {
                "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "TICKCAST_KAFKA__SASL_MECHANISM": "PLAIN",
                "TICKCAST_KAFKA__SASL_USERNAME": "u",
                "TICKCAST_KAFKA__SASL_PASSWORD": SECRET,
                "TICKCAST_KAFKA__SSL_CA_LOCATION": "/nonexistent/ca.pem",
            },
            "kafka.ssl_ca_location: no such file: /nonexistent/ca.pem",
        ),
        # the passthrough cannot undo what the delivery guarantee rests on
        ({"TICKCAST_KAFKA__CLIENT__ENABLE_AUTO_COMMIT": "true"}, "kafka.client.enable.auto.commit"),
        ({"TICKCAST_KAFKA__CLIENT__GROUP_ID": "x"}, "use kafka.group_id"),
        ({"TICKCAST_KAFKA__CLIENT": "x"}, "TICKCAST_KAFKA__CLIENT__<PROPERTY>"),
        # Redis TLS
        (
            {"TICKCAST_REDIS__TLS_CA_FILE": "{ca}"},
            "redis.tls_ca_file is set but redis.url is not a rediss:// (TLS) URL",
        ),
        (
            {"TICKCAST_REDIS__URL": "rediss://h:6380/0", "TICKCAST_REDIS__TLS_KEY_FILE": "{key}"},
            "redis.tls_key_file is set without redis.tls_cert_file",
        ),
        (
            {"TICKCAST_REDIS__URL": "rediss://h:6380/0", "TICKCAST_REDIS__TLS_CA_FILE": "/no/ca"},
            "redis.tls_ca_file: no such file: /no/ca",
        ),
    ],
)
def test_a_combination_that_cannot_work_names_the_key(
    env: dict[str, str], named: str, pem: dict[str, str]
) -> None:
    env = {k: v.format(**pem) for k, v in env.items()}
    with pytest.raises(ConfigError) as err:
        _load(env)
    message = str(err.value)
    assert named in message
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("toml", "variable"),
    [
        ("[kafka]\nsasl_password = 'x'\n", "TICKCAST_KAFKA__SASL_PASSWORD"),
        ("[kafka]\nssl_key_password = 'x'\n", "TICKCAST_KAFKA__SSL_KEY_PASSWORD"),
        (
            "[kafka]\nsasl_oauthbearer_client_secret = 'x'\n",
            "TICKCAST_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET",
        ),
        ("[kafka.client]\n'sasl.password' = 'x'\n", "TICKCAST_KAFKA__CLIENT__SASL_PASSWORD"),
        ("[kafka.client]\nssl.key.pem = 'x'\n", "TICKCAST_KAFKA__CLIENT__SSL_KEY_PEM"),
    ],
)
def test_a_secret_in_the_file_is_refused(tmp_path: Path, toml: str, variable: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load({}, toml, tmp_path)
    assert variable in str(err.value)


def test_the_file_may_hold_the_mechanism_when_the_password_is_in_the_environment(
    tmp_path: Path,
) -> None:
    toml = (
        "[kafka]\nsecurity_protocol = 'SASL_SSL'\nsasl_mechanism = 'SCRAM-SHA-512'\n"
        "sasl_username = 'tickcast'\n"
    )
    s = _load({"TICKCAST_KAFKA__SASL_PASSWORD": SECRET}, toml, tmp_path)
    assert s.kafka.librdkafka_common()["sasl.password"] == SECRET


def test_redis_acl_user_and_tls_files(pem: dict[str, str]) -> None:
    s = _load(
        {
            "TICKCAST_REDIS__URL": "rediss://cache:6380/0",
            "TICKCAST_REDIS__USERNAME": "tickcast",
            "TICKCAST_REDIS__PASSWORD": SECRET,
            "TICKCAST_REDIS__TLS_CA_FILE": pem["ca"],
            "TICKCAST_REDIS__TLS_CERT_FILE": pem["cert"],
            "TICKCAST_REDIS__TLS_KEY_FILE": pem["key"],
        }
    )
    assert s.redis.connection_kwargs() == {
        "username": "tickcast",
        "password": SECRET,
        "ssl_check_hostname": True,
        "ssl_ca_certs": pem["ca"],
        "ssl_certfile": pem["cert"],
        "ssl_keyfile": pem["key"],
    }
    assert SECRET not in repr(s)
    assert _load({}).redis.connection_kwargs() == {}


def test_cli_prints_one_line_without_the_secret() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TICKCAST_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "TICKCAST_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "TICKCAST_KAFKA__SASL_PASSWORD": SECRET,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "run"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "kafka.sasl_username is empty" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout

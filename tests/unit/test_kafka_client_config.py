"""What every Kafka client gets from the settings (stream/kafka.py), without a broker: the
passthrough's last word, librdkafka's refusal mapped to the key, a failed connection's reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream import config
from stream.kafka import (
    LIBRDKAFKA_LOG,
    _security_failure,
    consumer_config,
    producer_config,
    refused_settings,
)

ROOT = Path(__file__).resolve().parents[2]


def _settings(**env: str) -> config.Settings:
    return config.load(ROOT / "config.toml", environ=env)


def test_the_passthrough_reaches_every_client_and_has_the_last_word() -> None:
    s = _settings(
        TICKCAST_KAFKA__CLIENT__FETCH_WAIT_MAX_MS="50",
        TICKCAST_KAFKA__CLIENT__LINGER_MS="5",
        TICKCAST_KAFKA__CLIENT__SOCKET_KEEPALIVE_ENABLE="true",
    )
    consumer, producer = consumer_config(s), producer_config(s, "tx")
    assert consumer["fetch.wait.max.ms"] == "50"  # tickcast's own is 10
    assert producer["linger.ms"] == "5"  # tickcast's own is 0
    for conf in (consumer, producer, s.kafka.librdkafka_common()):
        assert conf["socket.keepalive.enable"] == "true"
    # what the guarantee rests on stays tickcast's
    assert consumer["enable.auto.commit"] is False
    assert producer["enable.idempotence"] is True and producer["transactional.id"] == "tx"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TICKCAST_KAFKA__CLIENT__LINGER_MSS": "5"}, "kafka.client.linger.mss"),
        ({"TICKCAST_KAFKA__CLIENT__SOCKET_TIMEOUT_MS": "soon"}, "kafka.client.socket.timeout.ms"),
    ],
)
def test_a_property_librdkafka_refuses_names_its_key(env: dict[str, str], key: str) -> None:
    from confluent_kafka.admin import AdminClient

    s = _settings(**env)
    with pytest.raises(KafkaException) as refused:
        AdminClient(s.kafka.librdkafka_common())
    message = str(refused_settings(s, refused.value))
    assert message.startswith(f"config error: {key}: librdkafka refused it:")


def test_a_failed_connection_names_what_to_check() -> None:
    s = _settings(
        TICKCAST_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        TICKCAST_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        TICKCAST_KAFKA__SASL_USERNAME="u",
        TICKCAST_KAFKA__SASL_PASSWORD="p",
    )
    assert "check kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password" in (
        _security_failure(s, ["b:9094/bootstrap: SASL authentication error: Authentication failed"])
        or ""
    )
    assert "TLS handshake failed; check kafka.ssl_ca_location" in (
        _security_failure(s, ["b:9094/bootstrap: SSL handshake failed: certificate verify failed"])
        or ""
    )
    plain = _settings()
    line = "FAIL [c] [thrd:b]: b:9094/bootstrap: Disconnected (after 2ms in state APIVERSION_QUERY)"
    why = _security_failure(plain, [line])
    assert why is not None and why.startswith("the broker does not speak PLAINTEXT on this port")
    assert "[thrd:" not in why
    assert _security_failure(s, [f"{KafkaError._TRANSPORT}: Connection refused"]) is None


def test_a_consumer_property_reaching_a_producer_is_not_a_warning() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("librdkafka", logging.WARNING, __file__, 1, message, None, None)

    notice = (
        "CONFWARN [tickcast-producer#producer-1] [thrd:app]: Configuration property"
        " fetch.wait.max.ms is a consumer property and will be ignored by this producer instance"
    )
    assert not LIBRDKAFKA_LOG.filter(record(notice))
    assert LIBRDKAFKA_LOG.filter(record("CONFWARN [c] [thrd:app]: something else entirely"))

"""The local broker's error paths, as a new user meets them: one clear message, no stack trace."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stream.errors import LocalInfraError
from tools import localinfra


def test_java_missing_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java, no mvn
    with pytest.raises(
        LocalInfraError, match=r"Java is not installed.*TICKCAST_KAFKA__BOOTSTRAP_SERVERS"
    ):
        localinfra.ensure_kafka_jars(localinfra.Layout(tmp_path / "state"))


def test_port_in_use_names_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = localinfra.Ports(kafka=port, controller=port + 1, redis=port + 2)
        with pytest.raises(LocalInfraError, match=f"port {port} .* already in use"):
            localinfra.start_kafka(localinfra.Layout(tmp_path), ports)
        with pytest.raises(LocalInfraError, match=f"port {port} .* already in use"):
            localinfra.start_redis(localinfra.Layout(tmp_path), localinfra.Ports(redis=port))


@pytest.mark.integration
def test_maven_unable_to_resolve_gives_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        localinfra, "POM", localinfra.POM.replace(localinfra.KAFKA_VERSION, "0.0.0-none")
    )
    with pytest.raises(LocalInfraError, match="Maven could not resolve") as err:
        localinfra.ensure_kafka_jars(localinfra.Layout(tmp_path))
    assert "maven.log" in str(err.value)

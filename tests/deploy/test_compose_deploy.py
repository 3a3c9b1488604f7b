"""docker-compose.yml as a deployment: data where the images write it, alerts routed, images pinned,
probes on the configured ports. No Docker engine here, so the file is parsed and the configs it
mounts are checked by the tools of the releases it pins (tests/unit/test_compose.py checks the
wiring to config.toml; tests/unit/test_alerts.py runs promtool on the Prometheus side).

amtool comes from Debian's `prometheus-alertmanager` package (`tickcast services tools`, which
`make test` runs, installs it): the same release, v0.25.0, as the compose file's image. Without it
these tests fail, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream import config

ROOT = Path(__file__).resolve().parents[2]
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
PLACEHOLDER_URL = "http://alert-webhook.invalid/tickcast"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run `tickcast services tools` (or `make test`)")
    return path


def _unescape(compose_text: str) -> str:
    """What the container gets from a compose string: `$$` is a literal `$`."""
    return compose_text.replace("$$", "$")


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a ./path in the repository, or a named volume)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def test_kafka_data_is_on_the_volume_where_the_broker_writes_it() -> None:
    compose = _compose()
    kafka = compose["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    # one directory, and the apache/kafka image's own data directory (prepared for its user)
    assert "," not in log_dirs and log_dirs == "/var/lib/kafka/data"
    source = _mounts(kafka)[log_dirs]
    assert source in compose["volumes"], "a named volume, kept by `docker compose down`"
    # a restart finds its formatted storage under the same cluster id
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", kafka["environment"]["CLUSTER_ID"])


def test_redis_data_is_on_a_named_volume() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert _mounts(redis)["/data"] in compose["volumes"]


def test_every_image_is_pinned_to_a_release() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert "image" not in service, name
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), (
            f"{name}: {image} is not pinned to a release (major.minor.patch)"
        )


def test_the_service_probe_follows_the_configured_metrics_port() -> None:
    """The tickcast image's HEALTHCHECK reads TICKCAST_METRICS__PORT (tests/unit/test_compose.py
    runs it against a live endpoint); here: the service sets that variable, publishes that port,
    Prometheus scrapes it, and nothing overrides the probe with a fixed port."""
    services = _compose()["services"]
    tickcast = services["tickcast"]
    port = int(tickcast["environment"]["TICKCAST_METRICS__PORT"])
    assert "healthcheck" not in tickcast or "TICKCAST_METRICS__PORT" in str(
        tickcast["healthcheck"]["test"]
    )
    published = {int(str(p).rsplit(":", 1)[1]) for p in tickcast["ports"]}
    assert published == {port}
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t for c in prometheus["scrape_configs"] for s in c["static_configs"] for t in s["targets"]
    ]
    assert f"tickcast:{port}" in targets


def test_the_replay_feed_does_not_inherit_the_consumers_probe() -> None:
    replay = _compose()["services"]["replay"]
    assert replay["build"] == "." and replay["command"][0] == "replay"
    assert replay["healthcheck"] == {"disable": True}


def test_every_long_running_service_has_a_healthcheck_on_its_own_port() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if name in {"tickcast", "replay"}:  # the image's probe; none (above)
            continue
        check = " ".join(service["healthcheck"]["test"])
        container_ports = {str(p).rsplit(":", 1)[1] for p in service.get("ports", [])}
        assert any(port in check for port in container_ports), f"{name}: {check}"


def test_prometheus_sends_alerts_to_the_alertmanager_service() -> None:
    services = _compose()["services"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    [target] = [
        t
        for am in prometheus["alerting"]["alertmanagers"]
        for s in am["static_configs"]
        for t in s["targets"]
    ]
    host, port = target.split(":")
    assert host in services and services[host]["image"].startswith("prom/alertmanager:")
    assert {str(p).rsplit(":", 1)[1] for p in services[host]["ports"]} == {port}
    assert services["prometheus"]["depends_on"][host] == {"condition": "service_healthy"}


def test_alertmanager_config_passes_amtool() -> None:
    proc = subprocess.run(
        [_tool("amtool"), "check-config", str(ALERTMANAGER_YML)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_amtool_check_has_teeth(tmp_path: Path) -> None:
    """A route to a receiver that does not exist fails the same check."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(
        ALERTMANAGER_YML.read_text().replace("receiver: webhook", "receiver: nobody", 1)
    )
    proc = subprocess.run(
        [_tool("amtool"), "check-config", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "nobody" in proc.stdout + proc.stderr


def test_default_receiver_is_the_webhook_and_every_route_reaches_it() -> None:
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert config["route"]["receiver"] == "webhook"
    for route in config["route"].get("routes", []):
        assert route["receiver"] in receivers
    [hook] = receivers["webhook"]["webhook_configs"]
    assert hook["url"] == PLACEHOLDER_URL and hook["send_resolved"] is True


def _alertmanager_start_script(tmp_path: Path) -> tuple[str, Path]:
    """The compose service's start script, with its container paths moved under tmp_path and
    without its last line (the exec of the server); returns it and where it writes the config."""
    service = _compose()["services"]["alertmanager"]
    assert service["entrypoint"] == ["/bin/sh", "-ec"]
    [script] = service["command"]
    # a single $ would be interpolated by compose from the host's environment, not the container's
    assert "$" not in script.replace("$$", "")
    lines = _unescape(script).strip().splitlines()
    assert lines[-1].startswith(
        "exec /bin/alertmanager --config.file=/alertmanager/alertmanager.yml"
    )
    mounts = _mounts(service)
    assert mounts["/etc/alertmanager/alertmanager.yml"] == "./deploy/alertmanager/alertmanager.yml"
    assert mounts["/alertmanager"] in _compose()["volumes"]
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    shutil.copy(ALERTMANAGER_YML, etc / "alertmanager.yml")
    body = "\n".join(lines[:-1])
    body = body.replace("/etc/alertmanager/", f"{etc}/").replace("/alertmanager/", f"{data}/")
    return body, data / "alertmanager.yml"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/services/T000/B000/XXXX",
        # characters sed would otherwise read as its own: & (the match), | (the delimiter), \
        "https://bridge.example.com/alert?token=a|b&room=ops&x=\\1",
    ],
)
def test_the_webhook_url_comes_from_the_environment(tmp_path: Path, url: str) -> None:
    script, written = _alertmanager_start_script(tmp_path)
    proc = subprocess.run(
        ["/bin/sh", "-ec", script],
        env={"PATH": "/usr/bin:/bin", "ALERTMANAGER_WEBHOOK_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(written.read_text())
    assert config["receivers"][0]["webhook_configs"][0]["url"] == url
    check = subprocess.run(
        [_tool("amtool"), "check-config", str(written)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_default_webhook_url_is_the_placeholder() -> None:
    env = _compose()["services"]["alertmanager"]["environment"]
    assert env["ALERTMANAGER_WEBHOOK_URL"] == "${ALERTMANAGER_WEBHOOK_URL:-" + PLACEHOLDER_URL + "}"


def test_compose_matches_the_settings_on_shutdown_and_partitions() -> None:
    """The stop grace period outlasts the shutdown bound (else Docker's SIGKILL cuts a commit), and
    the broker creates topics with the partition count the settings (and the k8s ScaledObject's
    maxReplicaCount) assume."""
    settings = config.load(ROOT / "config.toml", environ={})
    services = _compose()["services"]
    grace = services["tickcast"]["stop_grace_period"]
    assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) > settings.processing.shutdown_timeout_s
    assert services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"] == settings.topics.partitions

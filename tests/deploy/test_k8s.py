"""deploy/k8s checked offline: no cluster, no kubectl, no kustomize binary.

- every manifest against the Kubernetes OpenAPI schemas that `kubernetes-validate` ships, in their
  strict form (an unknown or misspelt field is an error), for the oldest and newest release it has
  that the manifests target;
- the KEDA ScaledObject against KEDA's CRD schema: `cloudcoil-models-keda` ships the CRD's
  openAPIV3Schema as generated models; their JSON Schema, made strict the same way, is checked
  with jsonschema;
- the manifests against the settings: brokers, group, topic, reset policy and lag threshold of the
  scaler, replicas bounded by the partitions, the grace period past the shutdown bound, the probes
  on the metrics port, every environment name a setting.

Each schema check also has a case that must fail, so a validator that accepts anything is caught.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from stream import config
from stream.config import SECRET_KEYS, Settings
from stream.kafka import consumer_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
#: The releases the manifests are checked against: the oldest one that has everything they use
#: (the PodDisruptionBudget's unhealthyPodEvictionPolicy is GA in 1.31), and the newest the
#: package ships.
KUBERNETES_VERSIONS = ("1.31", kubernetes_validate.latest_version())
#: The kafka scaler's parameters (KEDA docs, Scalers, Apache Kafka); its metadata is a plain
#: string map in the CRD, so a misspelt key would pass the schema and be ignored by KEDA.
KAFKA_SCALER_KEYS = {
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "partitionLimitation",
    "version",
    "sasl",
    "tls",
}


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def _config_map_data() -> dict[str, str]:
    """The data of the ConfigMap kustomize's configMapGenerator makes from the env file: one key
    per KEY=VALUE line, comments and blank lines skipped."""
    [generator] = _kustomization()["configMapGenerator"]
    [env_file] = generator["envs"]
    data = {}
    for line in (K8S / env_file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{env_file}: not KEY=VALUE: {line!r}"
        data[key] = value
    return data


def _config_map() -> dict[str, Any]:
    [generator] = _kustomization()["configMapGenerator"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": _config_map_data(),
    }


def _resources() -> list[dict[str, Any]]:
    docs = []
    for name in _kustomization()["resources"]:
        docs.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return docs


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in _resources() if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _settings() -> Settings:
    """What a pod runs with: the image's config.toml (the repository's) under the ConfigMap."""
    return config.load(ROOT / "config.toml", environ=_config_map_data())


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = sorted(d["kind"] for d in _resources())
    assert kinds == ["Deployment", "PodDisruptionBudget", "ScaledObject", "Service"]
    [image] = _kustomization()["images"]
    assert image["name"] == _container()["image"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version: str) -> None:
    for doc in [*_resources(), _config_map()]:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: below
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        # a misspelt field is not silently dropped
        (
            ("spec", "template", "spec", "terminationGracePeriodSecond"),
            30,
            "'terminationGracePeriodSecond' was unexpected",
        ),
        # a wrong type
        (
            ("spec", "template", "spec", "terminationGracePeriodSeconds"),
            "30s",
            "'30s' is not of type 'integer'",
        ),
    ],
)
def test_kubernetes_schema_check_has_teeth(path: tuple[str, ...], value: Any, reason: str) -> None:
    doc = copy.deepcopy(_one("Deployment"))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError) as err:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    assert reason in err.value.message


def _strict(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others, as Kubernetes's
    structural schemas prune (and kubernetes-validate's strict schemas reject) unknown fields.
    Maps (`additionalProperties` given, such as labels or the trigger metadata) stay open."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _keda_validator() -> jsonschema.protocols.Validator:
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = _strict(ScaledObject.model_json_schema(by_alias=True))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def test_scaled_object_matches_kedas_crd_schema() -> None:
    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    errors = [e.message for e in _keda_validator().iter_errors(scaled)]
    assert errors == []


def _mutated(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(_one("ScaledObject"))
    spec = doc["spec"]
    if change == "unknown field":
        spec["maxReplicas"] = spec.pop("maxReplicaCount")
    elif change == "wrong type":
        spec["maxReplicaCount"] = "six"
    elif change == "no triggers":
        del spec["triggers"]
    elif change == "trigger without type":
        del spec["triggers"][0]["type"]
    elif change == "non-string metadata":
        spec["triggers"][0]["metadata"]["lagThreshold"] = 1000
    elif change == "wrong kind":
        doc["kind"] = "ScaledJob"
    return doc


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("unknown field", "'maxReplicas' was unexpected"),
        ("wrong type", "'six' is not valid"),
        ("no triggers", "'triggers' is a required property"),
        ("trigger without type", "'type' is a required property"),
        ("non-string metadata", "1000 is not of type 'string'"),
        ("wrong kind", "'ScaledJob' is not valid"),
    ],
)
def test_keda_schema_check_has_teeth(change: str, reason: str) -> None:
    errors = [e.message for e in _keda_validator().iter_errors(_mutated(change))]
    assert any(reason in e for e in errors), errors


def test_scaler_watches_the_group_and_topic_tickcast_consumes() -> None:
    settings = _settings()
    consumer = consumer_config(settings)
    scaled = _one("ScaledObject")
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_SCALER_KEYS, set(meta) - KAFKA_SCALER_KEYS
    assert meta["bootstrapServers"] == consumer["bootstrap.servers"]
    assert meta["consumerGroup"] == consumer["group.id"] == settings.kafka.group_id
    assert meta["topic"] == settings.topics.ticks
    # a group without committed offsets: the scaler counts lag from where tickcast would start
    assert meta["offsetResetPolicy"] == consumer["auto.offset.reset"]
    # one pod per full batch of backlog
    assert meta["lagThreshold"] == str(settings.processing.max_batch)
    assert meta["allowIdleConsumers"] == "false"


def test_replicas_are_bounded_by_the_input_partitions() -> None:
    settings = _settings()
    spec = _one("ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["name"] == _one("Deployment")["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["maxReplicaCount"] == settings.topics.partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # KEDA owns the count: a replica count in the Deployment would reset it on every apply
    assert "replicas" not in _one("Deployment")["spec"]


def test_grace_period_exceeds_the_shutdown_bound() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    bound = _settings().processing.shutdown_timeout_s
    # room past the bound for the consumer's leave and the producer's close
    assert pod["terminationGracePeriodSeconds"] >= bound + 10


def test_probes_and_scrape_annotations_use_the_metrics_port() -> None:
    settings = _settings()
    assert settings.metrics.host == "0.0.0.0"  # reachable by the kubelet and Prometheus
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics.port}
    probes = {
        kind: (container[kind]["httpGet"]["path"], container[kind]["httpGet"]["port"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/healthz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }
    service = _one("Service")
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "metrics" and port["port"] == settings.metrics.port
    template = _one("Deployment")["spec"]["template"]
    for notes in (service["metadata"]["annotations"], template["metadata"]["annotations"]):
        assert notes == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(settings.metrics.port),
            "prometheus.io/path": "/metrics",
        }


def test_selectors_match_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        _one("Deployment")["spec"]["selector"]["matchLabels"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _one("Service")["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()


def test_pod_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    uid = re.search(r"useradd [^&]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert uid is not None
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1))
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = _container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and "memory" in resources["limits"]


def test_every_environment_name_is_a_setting_and_secrets_come_from_the_secret() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    # service links would add <NAME>_SERVICE_HOST & co.: TICKCAST_* names that tickcast rejects
    assert pod["enableServiceLinks"] is False
    config_map = _config_map_data()
    secret_names = {f"TICKCAST_{s.upper()}__{k.upper()}" for s, k in SECRET_KEYS}
    assert not secret_names & config_map.keys(), "a secret in the ConfigMap"
    [source] = _container()["envFrom"]
    assert source["configMapRef"]["name"] == _config_map()["metadata"]["name"]
    env = {e["name"]: e["valueFrom"] for e in _container()["env"]}
    for name, value_from in env.items():
        if name in secret_names:
            ref = value_from["secretKeyRef"]
            assert ref["name"] == "tickcast-credentials" and ref["optional"] is True
        else:
            assert "secretKeyRef" not in value_from, name
    assert env["TICKCAST_KAFKA__INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # the names load (an unknown TICKCAST_* name is a ConfigError), with values of the right kind
    plain = {**config_map, "TICKCAST_KAFKA__INSTANCE_ID": "tickcast-7d9f8b6c4-x2x9q"}
    assert config.load(ROOT / "config.toml", environ=plain).kafka.instance_id.startswith(
        "tickcast-"
    )
    for name in secret_names & env.keys():
        config.load(ROOT / "config.toml", environ={**plain, name: "not-a-real-secret"})

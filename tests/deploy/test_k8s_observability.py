"""docker/k8s observability: the API and worker pods expose a `metrics` port (never
through the public Service) and announce it; the service-monitor component scrapes
exactly those pods on it; the keda-worker-autoscaling component scales the worker
Deployment on the queue depth. The custom resources are checked against the hand-written
schemas in tests/deploy/schemas, as kubernetes-validate only knows built-in kinds."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.core.config import Settings, load_settings
from tests.deploy.parsing import DOCKER, K8S, load_yaml, load_yaml_documents, project_slug
from tests.deploy.test_k8s import (
    CONFIG,
    K8S_VERSIONS,
    RESOURCES,
    SECRET,
    only_container,
    resource,
)
from tests.deploy.test_observability_assets import (
    check_promql,
    declared_series,
    promql_metric_names,
)

COMPONENTS = K8S / "components"
SERVICE_MONITOR = COMPONENTS / "service-monitor"
KEDA = COMPONENTS / "keda-worker-autoscaling"
SCHEMAS = Path(__file__).parent / "schemas"
SCHEMA_FILES = {"PodMonitor": "podmonitor.json", "ScaledObject": "scaledobject.json"}
# The setting each Deployment's `metrics` port serves.
METRICS_PORTS = {"api": "METRICS_PORT", "worker": "WORKER_METRICS_PORT"}
PROMETHEUS_CONFIG: dict[str, Any] = load_yaml(DOCKER / "prometheus" / "prometheus.yml")


def component(path: Path) -> dict[str, Any]:
    kustomization: dict[str, Any] = load_yaml(path / "kustomization.yaml")
    return kustomization


def component_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for name in component(path)["resources"]
            for doc in load_yaml_documents(path / name)]  # fmt: skip


def only_document(path: Path, kind: str) -> dict[str, Any]:
    (document,) = [doc for doc in component_documents(path) if doc["kind"] == kind]
    return document


def validator(kind: str) -> Any:
    schema = json.loads((SCHEMAS / SCHEMA_FILES[kind]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def pod_labels(component_name: str) -> dict[str, str]:
    template = resource("Deployment", component_name)["spec"]["template"]
    return dict(template["metadata"]["labels"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against labels."""
    if selector.get("matchLabels", {}).items() - labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        present = key in labels
        if operator in {"In", "NotIn"}:
            present = labels.get(key) in expression["values"]
        if present != (operator in {"In", "Exists"}):
            return False
    return True


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """The `add` and `remove` operations of RFC 6902, which the components use."""
    patched = copy.deepcopy(document)
    for operation in operations:
        *parents, last = operation["path"].strip("/").split("/")
        target: Any = patched
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if operation["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        elif operation["op"] == "add" and last == "-":
            target.append(operation["value"])
        else:
            assert operation["op"] == "add", operation
            target[last] = operation["value"]
    return patched


def production_settings() -> Settings:
    return load_settings(
        _env_file=None, **{**CONFIG, **SECRET["stringData"], "SECRET_KEY": "s" * 48}
    )


@pytest.mark.parametrize("name", list(METRICS_PORTS))
def test_pods_expose_and_announce_their_metrics_port(name: str) -> None:
    settings = production_settings()
    port_number = getattr(settings, METRICS_PORTS[name])
    assert port_number == int(CONFIG[METRICS_PORTS[name]])
    (port,) = [port for port in only_container("Deployment", name)["ports"]
               if port["name"] == "metrics"]  # fmt: skip
    assert port["containerPort"] == port_number
    annotations = resource("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port_number),
        "prometheus.io/path": "/metrics",
    }
    # The pod IP, not only loopback: Prometheus scrapes from another pod.
    assert settings.metrics_host == "0.0.0.0"  # noqa: S104


def test_no_service_in_the_base_routes_to_a_metrics_port() -> None:
    metrics_ports = {int(CONFIG[setting]) for setting in METRICS_PORTS.values()}
    services = [doc for (kind, _), doc in RESOURCES.items() if kind == "Service"]
    assert services
    for service in services:
        for port in service["spec"]["ports"]:
            assert port["targetPort"] != "metrics"
            assert port["targetPort"] not in metrics_ports
            assert port["port"] not in metrics_ports


@pytest.mark.parametrize("path", [SERVICE_MONITOR, KEDA], ids=lambda path: path.name)
def test_component_kustomization_lists_exactly_its_files(path: Path) -> None:
    kustomization = component(path)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert kustomization["kind"] == "Component"
    resources = kustomization["resources"]
    patches = [patch["path"] for patch in kustomization.get("patches", [])]
    listed = [*resources, *patches]
    assert len(listed) == len(set(listed))
    on_disk = {file.name for file in path.iterdir()}
    assert on_disk == {"kustomization.yaml", *listed}


@pytest.mark.parametrize("path", [SERVICE_MONITOR, KEDA], ids=lambda path: path.name)
def test_component_resources_are_valid_against_their_schemas(path: Path) -> None:
    documents = component_documents(path)
    assert documents
    for document in documents:
        if document["kind"] in SCHEMA_FILES:
            validator(document["kind"]).validate(document)
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    ("kind", "path", "keys"),
    [
        ("PodMonitor", SERVICE_MONITOR, ("spec", "podMetricsEndpoints", 0, "prot")),
        ("PodMonitor", SERVICE_MONITOR, ("spec", "selector", "matchLabel")),
        ("ScaledObject", KEDA, ("spec", "scaleTargetRef", "nmae")),
        ("ScaledObject", KEDA, ("spec", "minReplicas")),
    ],
)
def test_the_schemas_reject_a_misspelt_field(
    kind: str, path: Path, keys: tuple[str | int, ...]
) -> None:
    document = copy.deepcopy(only_document(path, kind))
    target: Any = document
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validator(kind).validate(document)


def test_pod_monitor_scrapes_the_api_and_worker_pods_on_their_metrics_port() -> None:
    monitor = only_document(SERVICE_MONITOR, "PodMonitor")["spec"]
    selected = {
        name for (kind, name), document in RESOURCES.items()
        if kind in {"Deployment", "Job"}
        and selects(monitor["selector"], document["spec"]["template"]["metadata"]["labels"])
    }  # fmt: skip
    assert selected == {f"{project_slug()}-api", f"{project_slug()}-worker"}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for name in METRICS_PORTS:
        assert endpoint["port"] in {
            port["name"] for port in only_container("Deployment", name)["ports"]
        }
    # `job` is the component, as prometheus.yml names the compose stack's jobs.
    jobs = {pod_labels(name)[monitor["jobLabel"]] for name in METRICS_PORTS}
    assert jobs == {job["job_name"] for job in PROMETHEUS_CONFIG["scrape_configs"]}


def test_scaled_object_scales_the_worker_deployment_on_queue_depth(tmp_path: Path) -> None:
    scaled = only_document(KEDA, "ScaledObject")["spec"]
    worker = resource("Deployment", "worker")
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (worker["apiVersion"], worker["kind"])
    assert target["name"] == worker["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert urlsplit(metadata["serverAddress"]).scheme in {"http", "https"}
    assert float(metadata["threshold"]) > 0
    query = metadata["query"]
    assert promql_metric_names(query) == declared_series()["job_queue_depth"]
    queue = CONFIG.get("JOBS_QUEUE_NAME", Settings.model_fields["JOBS_QUEUE_NAME"].default)
    # The API and the worker both report the depth: max, not sum, of the copies.
    assert query == f'max(job_queue_depth{{queue="{queue}"}})'
    check_promql([query], tmp_path)


def test_keda_component_hands_the_worker_replica_count_to_keda() -> None:
    (patch,) = component(KEDA)["patches"]
    targets = [
        document for (kind, name), document in RESOURCES.items()
        if kind == patch["target"]["kind"] and name == patch["target"]["name"]
    ]  # fmt: skip
    assert [doc["metadata"]["name"] for doc in targets] == [f"{project_slug()}-worker"]
    patched = apply_json_patch(targets[0], load_yaml(KEDA / patch["path"]))
    assert "replicas" not in patched["spec"]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(patched, version, strict=True)


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    pytest.skip("neither kustomize nor kubectl is installed")


def test_an_overlay_with_both_components_builds_with_kustomize(tmp_path: Path) -> None:
    base = os.path.relpath(K8S, tmp_path)
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "components": [os.path.relpath(path, tmp_path) for path in (SERVICE_MONITOR, KEDA)],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    built = subprocess.run(
        [*kustomize_command(), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    documents = {(doc["kind"], doc["metadata"]["name"]): doc
                 for doc in yaml.safe_load_all(built.stdout) if doc}  # fmt: skip
    worker = documents[("Deployment", f"{project_slug()}-worker")]
    assert "replicas" not in worker["spec"]
    (monitor,) = [doc for (kind, _), doc in documents.items() if kind == "PodMonitor"]
    (scaled,) = [doc for (kind, _), doc in documents.items() if kind == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    for name in METRICS_PORTS:
        labels = documents[("Deployment", f"{project_slug()}-{name}")]["spec"]["template"]
        assert selects(monitor["spec"]["selector"], labels["metadata"]["labels"])

"""docker/k8s: valid against the Kubernetes schemas (offline, from kubernetes-validate's
bundled copies), wired to each other through kustomize, and probing the real routes."""

import copy
import re
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from httpx import ASGITransport, AsyncClient
from starlette.types import Receive, Scope, Send

from app.core.config import ConfigError, Environment, load_settings
from app.core.middleware import RequestContextMiddleware
from app.core.proxies import TrustedProxies
from tests.deploy.parsing import (
    DOCKER,
    K8S,
    documented_env_names,
    health_paths,
    load_yaml,
    load_yaml_documents,
    parse_dockerfile,
    project_slug,
    read_env_file,
)

# The oldest Kubernetes release still commonly run in managed clusters, and the newest
# the validator ships schemas for.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
KUSTOMIZATION: dict[str, Any] = load_yaml(K8S / "kustomization.yaml")
SECRET_EXAMPLE = K8S / "secret.example.yaml"
RESOURCES = {
    (doc["kind"], doc["metadata"]["name"]): doc
    for name in KUSTOMIZATION["resources"]
    for doc in load_yaml_documents(K8S / name)
}
(CONFIG_GENERATOR,) = KUSTOMIZATION["configMapGenerator"]
CONFIG = read_env_file(K8S / CONFIG_GENERATOR["envs"][0])
(SECRET,) = load_yaml_documents(SECRET_EXAMPLE)
WORKER_CHECK = ["arq", "--check", "app.jobs.worker.WorkerSettings"]
STORAGE_COMPONENT = K8S / "components" / "shared-storage"


def resource(kind: str, component: str) -> dict[str, Any]:
    return RESOURCES[(kind, f"{project_slug()}-{component}")]


def pod_spec(kind: str, component: str) -> dict[str, Any]:
    spec: dict[str, Any] = resource(kind, component)["spec"]["template"]["spec"]
    return spec


def workloads() -> list[tuple[str, str]]:
    return [("Deployment", "api"), ("Deployment", "worker"), ("Job", "migrate")]


def only_container(kind: str, component: str) -> dict[str, Any]:
    (container,) = pod_spec(kind, component)["containers"]
    assert container["name"] == component
    return dict(container)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "path", [*(K8S / name for name in KUSTOMIZATION["resources"]), SECRET_EXAMPLE], ids=str
)
def test_manifests_are_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    for document in load_yaml_documents(path):
        # strict: unknown fields (a misspelt probe, say) are errors, not silently ignored.
        kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(KUSTOMIZATION["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")}
    assert on_disk - listed == {"kustomization.yaml", SECRET_EXAMPLE.name}
    assert listed <= on_disk
    assert set(RESOURCES) == {
        ("Deployment", f"{project_slug()}-api"),
        ("Deployment", f"{project_slug()}-worker"),
        ("Job", f"{project_slug()}-migrate"),
        ("Service", f"{project_slug()}-api"),
        ("HorizontalPodAutoscaler", f"{project_slug()}-api"),
        ("PodDisruptionBudget", f"{project_slug()}-api"),
    }


@pytest.mark.parametrize(("kind", "component"), workloads())
def test_images_and_env_come_from_kustomize(kind: str, component: str) -> None:
    container = only_container(kind, component)
    (image,) = KUSTOMIZATION["images"]
    # A bare name that kustomize replaces with the registry and tag in one place.
    assert container["image"] == image["name"] == project_slug()
    assert image["newName"]
    assert image["newTag"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": CONFIG_GENERATOR["name"]}},
        {"secretRef": {"name": SECRET["metadata"]["name"]}},
    ]
    assert "env" not in container


@pytest.mark.parametrize(("kind", "component"), workloads())
def test_pods_run_non_root_on_a_read_only_root_with_a_writable_tmp(
    kind: str, component: str
) -> None:
    spec = pod_spec(kind, component)
    image_user = parse_dockerfile(DOCKER / "Dockerfile")
    (user,) = image_user.stages[-1].all("USER")
    uid = int(image_user.expand(user).split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert spec["automountServiceAccountToken"] is False
    container = only_container(kind, component)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]


@pytest.mark.parametrize(("kind", "component"), workloads())
def test_containers_have_resource_requests_and_limits(kind: str, component: str) -> None:
    resources = only_container(kind, component)["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}


def test_api_probes_hit_the_apps_real_health_routes() -> None:
    liveness, readiness = health_paths(CONFIG.get("API_V1_STR", "/api/v1"))
    api = only_container("Deployment", "api")
    assert api["livenessProbe"]["httpGet"]["path"] == liveness
    assert api["startupProbe"]["httpGet"]["path"] == liveness
    assert api["readinessProbe"]["httpGet"]["path"] == readiness
    (port,) = [port for port in api["ports"] if port["name"] == "http"]
    assert port["containerPort"] == int(CONFIG["PORT"])
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert api[probe]["httpGet"]["port"] == port["name"]


def test_api_shuts_down_within_the_grace_period() -> None:
    api = only_container("Deployment", "api")
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) + int(CONFIG["GRACEFUL_SHUTDOWN_TIMEOUT"])
    assert budget < pod_spec("Deployment", "api")["terminationGracePeriodSeconds"]


def test_worker_runs_arq_and_is_probed_with_arqs_health_check() -> None:
    worker = only_container("Deployment", "worker")
    assert worker["command"] == ["arq", "app.jobs.worker.WorkerSettings"]
    assert worker["livenessProbe"]["exec"]["command"] == WORKER_CHECK
    assert worker["startupProbe"]["exec"]["command"] == WORKER_CHECK


def test_migration_job_waits_for_the_database_then_migrates() -> None:
    job = resource("Job", "migrate")["spec"]
    command = only_container("Job", "migrate")["command"]
    assert command[:3] == ["python", "-m", "scripts.prestart"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["backoffLimit"] >= 1
    assert job["activeDeadlineSeconds"] > 0


def test_service_hpa_and_pdb_select_the_api_pods() -> None:
    pod_labels = resource("Deployment", "api")["spec"]["template"]["metadata"]["labels"]
    service = resource("Service", "api")["spec"]
    assert service["selector"].items() <= pod_labels.items()
    (port,) = service["ports"]
    assert port["targetPort"] == only_container("Deployment", "api")["ports"][0]["name"]
    pdb = resource("PodDisruptionBudget", "api")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = resource("HorizontalPodAutoscaler", "api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == resource("Deployment", "api")["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    assert pdb["minAvailable"] < hpa["minReplicas"]
    # The HPA owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in resource("Deployment", "api")["spec"]


def test_config_and_secret_keys_are_documented_in_env_example() -> None:
    assert set(CONFIG) <= documented_env_names()
    assert set(SECRET["stringData"]) <= documented_env_names()
    assert not {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} & set(CONFIG)


def test_config_and_secret_form_valid_production_settings() -> None:
    values = {**CONFIG, **SECRET["stringData"], "SECRET_KEY": "s" * 48}
    settings = load_settings(_env_file=None, **values)
    assert settings.ENVIRONMENT is Environment.PRODUCTION
    assert settings.DATABASE_URL.startswith("postgresql+asyncpg://")


def test_the_secret_example_holds_no_usable_secret() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load_settings(_env_file=None, **CONFIG, **SECRET["stringData"])


async def client_seen_by_the_app(peer: str, forwarded_for: str) -> tuple[str, str]:
    """(client address, scheme) the app sees with the pods' TRUSTED_PROXIES."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(client=scope["client"][0], scheme=scope["scheme"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    networks = [ip_network(part) for part in CONFIG["TRUSTED_PROXIES"].split(",")]
    proxied = RequestContextMiddleware(app, trusted_proxies=TrustedProxies(networks))
    transport = ASGITransport(app=proxied, client=(peer, 40000))
    async with AsyncClient(transport=transport, base_url="http://api") as client:
        headers = {"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}
        await client.get("/", headers=headers)
    return seen["client"], seen["scheme"]


async def test_pods_see_the_real_client_behind_the_ingress_not_a_forged_one() -> None:
    # The ingress (a pod address) appends the address it saw to what the client sent.
    assert await client_seen_by_the_app("10.12.0.7", "6.6.6.6, 203.0.113.9") == (
        "203.0.113.9",
        "https",
    )
    # A peer outside the private ranges is the client, whatever it claims.
    assert await client_seen_by_the_app("198.51.100.4", "6.6.6.6") == ("198.51.100.4", "http")


def selects(selector: str, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector of `key=value` and `key in (a,b)` terms."""
    terms = re.findall(r"([\w./-]+)\s+in\s+\(([^)]*)\)|([\w./-]+)=([\w.-]+)", selector)
    assert terms, selector
    return all(
        labels.get(key or eq_key) in ([v.strip() for v in values.split(",")] if key else [value])
        for key, values, eq_key, value in terms
    )


def apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    patched = copy.deepcopy(document)
    for operation in operations:
        assert operation["op"] == "add"
        *parents, last = operation["path"].strip("/").split("/")
        target: Any = patched
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        assert last == "-", operation["path"]
        assert isinstance(target, list), operation["path"]
        target.append(operation["value"])
    return patched


def test_shared_storage_component_mounts_one_volume_at_storage_dir_in_api_and_worker() -> None:
    component = load_yaml(STORAGE_COMPONENT / "kustomization.yaml")
    assert component["kind"] == "Component"
    (claim,) = [doc for name in component["resources"]
                for doc in load_yaml_documents(STORAGE_COMPONENT / name)]  # fmt: skip
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # It switches the base's settings to the filesystem backend, which production then
    # accepts, and mounts the claim at STORAGE_DIR.
    (generator,) = component["configMapGenerator"]
    assert (generator["name"], generator["behavior"]) == (CONFIG_GENERATOR["name"], "merge")
    merged = CONFIG | dict(literal.split("=", 1) for literal in generator["literals"])
    values = {**merged, **SECRET["stringData"], "SECRET_KEY": "s" * 48}
    settings = load_settings(_env_file=None, **values)
    assert settings.STORAGE_BACKEND == "filesystem"
    assert settings.is_production
    (patch,) = component["patches"]
    selector = patch["target"]["labelSelector"]
    operations = load_yaml(STORAGE_COMPONENT / patch["path"])
    patched = {}
    for (kind, name), document in RESOURCES.items():
        if kind == patch["target"]["kind"] and selects(selector, document["metadata"]["labels"]):
            patched[name] = apply_json_patch(document, operations)
    assert set(patched) == {f"{project_slug()}-api", f"{project_slug()}-worker"}
    for document in [claim, *patched.values()]:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
    for document in patched.values():
        spec = document["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = container["volumeMounts"]
        (mount,) = [m for m in mounts if m["mountPath"] == str(settings.STORAGE_DIR)]
        assert volumes[mount["name"]]["persistentVolumeClaim"] == {
            "claimName": claim["metadata"]["name"]
        }


def test_the_base_keeps_files_in_s3_without_a_volume() -> None:
    values = {**CONFIG, **SECRET["stringData"], "SECRET_KEY": "s" * 48}
    settings = load_settings(_env_file=None, **values)
    assert settings.STORAGE_BACKEND == "s3"
    assert settings.S3_BUCKET
    for kind, component in (("Deployment", "api"), ("Deployment", "worker")):
        mounted = {m["mountPath"] for m in only_container(kind, component)["volumeMounts"]}
        assert mounted == {"/tmp"}, mounted

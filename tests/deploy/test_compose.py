"""docker/docker-compose.yml: the services, their order of start-up and their settings."""

import os
import re
import shlex
import subprocess
from typing import Any

import pytest
from sqlalchemy import make_url

from app.core.config import Environment
from tests.deploy.parsing import (
    DOCKER,
    compose_environment,
    documented_env_names,
    load_yaml,
    parse_dockerfile,
    project_slug,
)
from tests.support import ROOT, make_settings

COMPOSE: dict[str, Any] = load_yaml(DOCKER / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ("api", "worker", "migrate")
WORKER = "app.jobs.worker.WorkerSettings"


def test_the_stack_has_api_worker_migrate_and_both_databases() -> None:
    # `make up` starts these; the observability profile's services only on request.
    default = {name for name, spec in SERVICES.items() if "profiles" not in spec}
    assert default == {"api", "worker", "migrate", "db", "redis"}
    assert COMPOSE["name"] == project_slug()
    assert SERVICES["db"]["image"].startswith("postgres:16")
    assert SERVICES["redis"]["image"].startswith("redis:7")


@pytest.mark.parametrize("service", ["db", "redis"])
def test_databases_keep_data_in_named_volumes_and_report_health(service: str) -> None:
    spec = SERVICES[service]
    assert spec["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    volume = spec["volumes"][0].split(":")[0]
    assert volume in COMPOSE["volumes"]


@pytest.mark.parametrize("service", ["api", "worker"])
def test_api_and_worker_start_after_migrations_and_healthy_databases(service: str) -> None:
    assert SERVICES[service]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_migrate_is_a_one_shot_upgrade_after_the_database_is_healthy() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"db": {"condition": "service_healthy"}}


def test_api_reloads_code_from_a_bind_mount_of_the_repository() -> None:
    api = SERVICES["api"]
    assert (DOCKER / api["build"]["context"]).resolve() == ROOT
    assert (ROOT / api["build"]["dockerfile"]) == DOCKER / "Dockerfile.dev"
    source, target = api["volumes"][0].split(":")
    assert (DOCKER / source).resolve() == ROOT
    assert target == "/app"
    assert api["command"][:2] == ["uvicorn", "app.main:app"]
    assert "--reload" in api["command"]
    assert api["healthcheck"]["test"] == ["CMD", "python", "scripts/healthcheck.py"]
    assert "8000:8000" in api["ports"]


def makefile_recipe(target: str) -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    # The target's last `$(RUN)` line is the command it runs; earlier lines are checks.
    recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe is not None
    commands = re.findall(r"^\t\$\(RUN\) (.+)$", recipe[1], re.MULTILINE)
    assert commands
    return shlex.split(commands[-1])


def test_worker_runs_arq_restarted_on_code_changes_like_make_worker() -> None:
    worker = SERVICES["worker"]
    # arq's own --watch restarts its loop on the code it imported at start-up.
    assert "--watch" not in worker["command"]
    assert worker["command"] == makefile_recipe("worker")
    assert worker["command"][0] == "watchfiles"
    assert f"arq {WORKER}" in worker["command"]
    assert worker["healthcheck"]["test"] == ["CMD", "arq", "--check", WORKER]


def test_containers_write_into_the_bind_mount_as_the_users_uid() -> None:
    dockerfile = parse_dockerfile(DOCKER / "Dockerfile.dev")
    (user,) = dockerfile.stages[-1].all("USER")
    assert "${APP_UID}" in user
    assert "APP_UID=1000" in dockerfile.stages[-1].all("ARG")
    for service in APP_SERVICES:
        assert SERVICES[service]["build"]["args"] == {"APP_UID": "${APP_UID:-1000}"}
    assert "APP_UID" in documented_env_names()
    planned = subprocess.run(
        ["make", "--no-print-directory", "--dry-run", "up"],
        cwd=ROOT, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "APP_UID=${APP_UID:-$(id -u)} docker compose" in planned


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_app_service_environment_is_documented_in_env_example(service: str) -> None:
    environment = SERVICES[service].get("environment", {})
    assert set(environment) <= documented_env_names()


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_get_valid_development_settings_for_the_stack(service: str) -> None:
    environment = compose_environment(SERVICES[service])
    settings = make_settings(environment.pop("DATABASE_URL"), **environment)
    assert settings.ENVIRONMENT is Environment.DEVELOPMENT
    assert "dev" in settings.SECRET_KEY.get_secret_value()
    database = make_url(settings.DATABASE_URL)
    postgres = SERVICES["db"]["environment"]
    assert database.host == "db"
    assert (database.username, database.password, database.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert make_url(settings.REDIS_URL).host == "redis"


def test_worker_and_migrate_get_the_same_settings_as_the_api() -> None:
    # A job runs against the database, Redis queue and export directory the API uses.
    api = SERVICES["api"]
    for service in ("worker", "migrate"):
        assert SERVICES[service]["environment"] == api["environment"]
        assert SERVICES[service]["volumes"] == api["volumes"]


S3_PROFILE = ("minio", "minio-bucket")


def test_the_s3_profile_serves_a_bucket_the_app_uses_when_asked() -> None:
    # Files stay in ./storage unless STORAGE_BACKEND=s3 is exported for `compose up`.
    assert compose_environment(SERVICES["api"])["STORAGE_BACKEND"] == "filesystem"
    environment = compose_environment(SERVICES["api"], {"STORAGE_BACKEND": "s3"})
    settings = make_settings(environment.pop("DATABASE_URL"), **environment)
    assert settings.STORAGE_BACKEND == "s3"
    minio, bucket = (SERVICES[name] for name in S3_PROFILE)
    for spec in (minio, bucket):
        assert spec["profiles"] == ["s3"]
        assert re.fullmatch(r"minio/(minio|mc):RELEASE\.[\dT\-Z]+", spec["image"]), spec["image"]
    # The app reaches MinIO by service name on the port it listens on, with its user...
    command = minio["command"]
    port = command[command.index("--address") + 1].lstrip(":")
    assert f"http://minio:{port}" == settings.S3_ENDPOINT_URL
    assert minio["environment"]["MINIO_ROOT_USER"] == settings.S3_ACCESS_KEY_ID
    secret = settings.S3_SECRET_ACCESS_KEY
    assert secret is not None
    assert secret.get_secret_value() == minio["environment"]["MINIO_ROOT_PASSWORD"]
    # ...a browser by the port published on this machine only...
    assert f"127.0.0.1:{port}:{port}" in minio["ports"]
    assert all(published.startswith("127.0.0.1:") for published in minio["ports"])
    assert f"http://localhost:{port}" == settings.S3_PUBLIC_ENDPOINT_URL
    assert settings.S3_FORCE_PATH_STYLE
    # ...and the bucket it names is created once MinIO is healthy.
    assert bucket["depends_on"] == {"minio": {"condition": "service_healthy"}}
    (script,) = bucket["command"]
    assert f"http://minio:{port}" in script
    assert f"mc mb --ignore-existing local/{settings.S3_BUCKET}" in script
    assert minio["volumes"][0].split(":")[0] in COMPOSE["volumes"]

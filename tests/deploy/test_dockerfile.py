"""The production and development Dockerfiles and the build context, read statically."""

import os
import re
import shlex
import tomllib

import pytest
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from app.core.config import Settings
from tests.deploy.parsing import (
    DOCKER,
    SCRIPTS,
    Dockerfile,
    Stage,
    documented_env_names,
    env_names,
    exec_form,
    health_paths,
    is_dockerignored,
    parse_dockerfile,
)
from tests.support import ROOT

PROD = parse_dockerfile(DOCKER / "Dockerfile")
DEV = parse_dockerfile(DOCKER / "Dockerfile.dev")
# Variables of the interpreter and tools, not of the app or its start script.
TOOL_ENV = {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}


def runtime(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stages[-1]


def uv_sync_commands(dockerfile: Dockerfile) -> list[list[str]]:
    commands = []
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            words = shlex.split(run)
            if "uv" in words and "sync" in words:
                commands.append(words)
    return commands


def test_production_image_installs_exactly_the_lockfile_in_a_builder_stage() -> None:
    (sync,) = uv_sync_commands(PROD)
    assert {"--frozen", "--no-dev"} <= set(sync)
    # Sentry (SENTRY_DSN), S3 storage and SMTP mail (the Kubernetes config's choices)
    # must work in the image; the other extras are a fork's choice.
    extras = {sync[i + 1] for i, word in enumerate(sync) if word == "--extra"}
    assert extras == {"observability", "storage", "email"}
    builder = next(stage for stage in PROD.stages if any("uv" in r for r in stage.all("RUN")))
    assert builder is not runtime(PROD)
    assert any("source=uv.lock" in run for run in builder.all("RUN"))
    # The runtime stage takes the environment from the builder and nothing from uv.
    copies_from = [c for c in runtime(PROD).all("COPY") if c.startswith("--from=")]
    assert copies_from == [f"--from={builder.name} /opt/venv /opt/venv"]


def test_runtime_stage_is_slim_without_compilers_or_package_installs() -> None:
    base = PROD.expand(runtime(PROD).base)
    assert re.fullmatch(r"python:3\.\d+-slim", base), base
    runs = " ".join(runtime(PROD).all("RUN"))
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip install", "uv "):
        assert forbidden not in runs


def test_production_image_runs_as_a_fixed_non_root_uid() -> None:
    (user,) = runtime(PROD).all("USER")
    uid, _, gid = PROD.expand(user).partition(":")
    assert int(uid) >= 1000
    assert int(gid) > 0


def test_production_image_never_reloads_and_serves_through_the_exec_start_script() -> None:
    assert "--reload" not in (DOCKER / "Dockerfile").read_text()
    assert "--reload" not in (SCRIPTS / "serve").read_text()
    (cmd,) = runtime(PROD).all("CMD")
    assert exec_form(cmd) == ["/app/scripts/serve"]
    assert os.access(SCRIPTS / "serve", os.X_OK)
    script = (SCRIPTS / "serve").read_text()
    assert re.search(r"^exec uvicorn app\.main:app", script, re.MULTILINE)
    for flag, variable in [
        ("--workers", "WEB_CONCURRENCY"),
        ("--timeout-graceful-shutdown", "GRACEFUL_SHUTDOWN_TIMEOUT"),
        ("--port", "PORT"),
    ]:
        assert re.search(rf'{flag} "\$\{{{variable}:-[^}}]+\}}"', script), flag
    # TRUSTED_PROXIES, applied by the app, is the one list of trusted proxies.
    assert "--no-proxy-headers" in script
    assert "forwarded-allow-ips" not in script
    assert "--no-access-log" in script


def test_healthcheck_probes_liveness_with_the_standard_library() -> None:
    (healthcheck,) = runtime(PROD).all("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert exec_form(command) == ["python", "/app/scripts/healthcheck.py"]
    assert "--interval=" in options
    assert "--timeout=" in options
    script = (SCRIPTS / "healthcheck.py").read_text()
    assert not re.search(r"^\s*(import|from) app\b", script, re.MULTILINE)
    liveness, _ = health_paths("/api/v1")
    assert '"/api/v1"' in script
    assert liveness.removeprefix("/api/v1") in script


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    for dockerfile in (PROD, DEV):
        for stage in dockerfile.stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.split() if not w.startswith("--")]
                if copy.startswith("--from="):
                    continue
                for source in words[:-1]:
                    if source == ".":
                        continue
                    assert (ROOT / source).exists(), source
                    assert not is_dockerignored(source), source


@pytest.mark.parametrize(
    "path",
    [".env", ".env.production", ".venv/bin/python", ".git/config", ".tools/bin/uv",
     "app/__pycache__/main.cpython-312.pyc", ".mypy_cache/x", ".pytest_cache/x",
     ".secrets/jwt.pem", "certs/server.key", "app.db", "storage/exports/items-1.csv"],
)  # fmt: skip
def test_secrets_local_state_and_caches_stay_out_of_the_build_context(path: str) -> None:
    assert is_dockerignored(path)


def test_the_application_is_in_the_build_context() -> None:
    for path in ("app/main.py", "migrations/env.py", "scripts/serve", "uv.lock", "pyproject.toml"):
        assert not is_dockerignored(path), path


def test_development_image_reloads_with_dev_dependencies() -> None:
    (sync,) = uv_sync_commands(DEV)
    assert "--frozen" in sync
    assert "--no-dev" not in sync
    (cmd,) = runtime(DEV).all("CMD")
    command = exec_form(cmd)
    assert command[:2] == ["uvicorn", "app.main:app"]
    assert "--reload" in command
    assert "--no-access-log" in command
    assert runtime(DEV).all("USER")


def test_images_use_the_uv_version_the_makefile_bootstraps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    version = re.search(r"^UV_VERSION \?= (\S+)$", makefile, re.MULTILINE)
    assert version is not None
    for image in (PROD, DEV):
        assert image.stages[0].base == f"ghcr.io/astral-sh/uv:{version[1]}"
        # Literal versions in FROM (no ARG): Dependabot cannot update an ARG.
        assert not image.args
    assert python_version(PROD) == python_version(DEV)


def python_version(image: Dockerfile) -> str:
    """The X.Y of every python:X.Y-slim stage (one version per file)."""
    (version,) = {
        stage.base.removeprefix("python:").removesuffix("-slim")
        for stage in image.stages
        if stage.base.startswith("python:")
    }
    return version


def test_image_environment_is_documented_in_env_example() -> None:
    names = {name for env in runtime(PROD).all("ENV") for name in env_names(env)}
    assert {"PORT", "WEB_CONCURRENCY"} <= names
    assert names - TOOL_ENV <= documented_env_names()


# python:<version>-slim is Debian bookworm: glibc 2.36, on amd64 and arm64 hosts.
IMAGE_GLIBC_MINOR = 36
IMAGE_ARCHES = ("x86_64", "aarch64")


def image_tags(python: tuple[int, int], arch: str) -> set[Tag]:
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(IMAGE_GLIBC_MINOR, 16, -1)]
    platforms += [f"manylinux2014_{arch}", f"linux_{arch}"]
    if arch == "x86_64":
        platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return set(cpython_tags(python, platforms=platforms)) | set(
        compatible_tags(python, f"cp{python[0]}{python[1]}", platforms)
    )


def test_images_python_is_supported_by_the_lock_and_every_package_has_a_wheel_for_it() -> None:
    version = python_version(PROD)
    python = (int(version.split(".")[0]), int(version.split(".")[1]))
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in (lock["requires-python"], project["requires-python"]):
        assert SpecifierSet(requirement).contains(f"{version}.0"), requirement
    # The slim images have no compiler: a package without a matching wheel fails the build.
    # Packages only ever required on Windows (pywin32, by a dev tool) are never installed.
    markers: dict[str, set[str]] = {}
    for package in lock["package"]:
        for dependency in package.get("dependencies", []):
            markers.setdefault(dependency["name"], set()).add(dependency.get("marker", ""))
    windows_only = {
        name
        for name, found in markers.items()
        if all("sys_platform == 'win32'" in m for m in found)
    }
    missing = []
    for package in lock["package"]:
        if "registry" not in package["source"] or package["name"] in windows_only:
            continue
        wheel_tags = set().union(
            *(
                parse_wheel_filename(wheel["url"].rsplit("/", 1)[1])[3]
                for wheel in package.get("wheels", [])
            )
        )
        for arch in IMAGE_ARCHES:
            if not wheel_tags & image_tags(python, arch):
                missing.append(f"{package['name']} {package['version']} ({arch})")
    assert missing == [], f"no wheel for Python {version} on Debian: {missing}"


def test_the_default_storage_dir_is_a_directory_the_app_user_owns() -> None:
    stage = runtime(PROD)
    (workdir,) = stage.all("WORKDIR")
    (user,) = stage.all("USER")
    uid = PROD.expand(user).split(":")[0]
    export_dir = os.path.normpath(
        os.path.join(workdir, Settings.model_fields["STORAGE_DIR"].default)
    )
    created = [shlex.split(PROD.expand(run)) for run in stage.all("RUN")]
    assert any(
        words[i : i + 7] == ["install", "-d", "-o", uid, "-g", uid, export_dir]
        for words in created
        for i in range(len(words))
    ), f"{export_dir} is not created for uid {uid}"

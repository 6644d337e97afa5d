"""The forge files: the GitHub Actions workflow runs the same make commands as .ci/run on
the same services, Dependabot watches every kind of dependency, and the pre-commit hooks
run from .venv and pass on a fresh copy of the repository."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from tests.deploy.parsing import load_yaml
from tests.support import ROOT, copy_repository

WORKFLOW_PATH = ROOT / ".github" / "workflows" / "ci.yml"
WORKFLOW: dict[Any, Any] = load_yaml(WORKFLOW_PATH)
JOBS: dict[str, Any] = WORKFLOW["jobs"]
DEPENDABOT: dict[str, Any] = load_yaml(ROOT / ".github" / "dependabot.yml")
PRE_COMMIT: dict[str, Any] = load_yaml(ROOT / ".pre-commit-config.yaml")
HOOKS: list[dict[str, Any]] = [hook for repo in PRE_COMMIT["repos"] for hook in repo["hooks"]]
MAKEFILE = (ROOT / "Makefile").read_text()
CI_SCRIPT = (ROOT / ".ci" / "run").read_text()

# One `make` invocation: the variables set in front of it and its arguments.
MakeRun = tuple[dict[str, str], tuple[str, ...]]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z_-]*):(?!=)", MAKEFILE, re.MULTILINE))


def recipe(target: str) -> list[list[str]]:
    """A Makefile target's command lines, without `@` and `$(RUN)`."""
    found = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", MAKEFILE, re.MULTILINE)
    assert found is not None, f"the Makefile has no {target} target"
    lines = [line.strip().lstrip("@") for line in found[1].splitlines()]
    return [shlex.split(line.removeprefix("$(RUN) ")) for line in lines]


def make_runs(script: str) -> list[MakeRun]:
    """Every simple command in a shell script (or a `run:` block) that invokes make."""
    runs: list[MakeRun] = []
    for line in script.splitlines():
        if line.lstrip().startswith("#") or not re.search(r"\bmake\b", line):
            continue
        for command in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(command, comments=True)
            env: dict[str, str] = {}
            while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            if words and words[0] == "make":
                runs.append((env, tuple(words[1:])))
    return runs


def targets_of(args: tuple[str, ...]) -> list[str]:
    return [arg for arg in args if not arg.startswith("-") and "=" not in arg]


def workflow_runs() -> list[tuple[str, dict[str, str], tuple[str, ...]]]:
    """(job, environment in effect, make arguments) for every make the workflow runs."""
    runs = []
    for name, job in JOBS.items():
        for step in job["steps"]:
            for prefix, args in make_runs(step.get("run", "")):
                env = {**WORKFLOW.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                runs.append((name, {**env, **prefix}, args))
    return runs


def ci_script_runs() -> list[tuple[dict[str, str], tuple[str, ...]]]:
    """(environment in effect, make arguments) for every make .ci/run runs."""
    found = re.findall(r"^(?:export )?(\w+)=(.*)$", CI_SCRIPT, re.MULTILINE)
    variables = {name: (shlex.split(value) or [""])[0] for name, value in found}
    exported = re.findall(r"^export (\w+)=", CI_SCRIPT, re.MULTILINE)

    def expand(value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: expand(variables.get(m[1], "")), value)

    runs = []
    for prefix, args in make_runs(CI_SCRIPT):
        env = {name: variables[name] for name in exported} | prefix
        runs.append(({name: expand(value) for name, value in env.items()}, args))
    return runs


def suite_runs(
    runs: list[tuple[dict[str, str], tuple[str, ...]]],
) -> set[tuple[str, tuple[str, ...], frozenset[str]]]:
    """(backend, make arguments, CI/TEST_* variables set) for each test run."""
    return {
        (
            "postgresql" if env.get("TEST_DATABASE_URL", "").startswith("postgres") else "sqlite",
            args,
            frozenset(name for name in env if name == "CI" or name.startswith("TEST_")),
        )
        for env, args in runs
        if "test" in targets_of(args)
    }


def uses(step: dict[str, Any], action: str) -> bool:
    return str(step.get("uses", "")).startswith(f"{action}@")


def test_workflow_runs_on_every_push_and_pull_request() -> None:
    # YAML 1.1 reads the bare key `on` as the boolean true.
    triggers = WORKFLOW.get("on", WORKFLOW.get(True))
    assert triggers is not None
    assert {"push", "pull_request"} <= set(triggers)
    assert WORKFLOW["permissions"] == {"contents": "read"}


def test_workflow_has_lint_sqlite_and_postgresql_jobs() -> None:
    runs = workflow_runs()
    assert any(targets_of(args) == ["lint"] for _, _, args in runs)
    backends = {backend for backend, _, _ in suite_runs([(env, args) for _, env, args in runs])}
    assert backends == {"sqlite", "postgresql"}
    for name, job in JOBS.items():
        assert uses(job["steps"][0], "actions/checkout"), f"{name} does not check out first"


def test_every_job_installs_the_pinned_uv_with_caching() -> None:
    uv_version = re.search(r"^UV_VERSION \?= (\S+)$", MAKEFILE, re.MULTILINE)
    assert uv_version is not None
    assert WORKFLOW["env"]["UV_VERSION"] == uv_version[1]
    for name, job in JOBS.items():
        setup = [step for step in job["steps"] if uses(step, "astral-sh/setup-uv")]
        assert len(setup) == 1, f"{name} does not set up uv"
        options = setup[0]["with"]
        assert options["enable-cache"] is True, name
        assert options["cache-dependency-glob"] == "uv.lock", name
        assert options["version"] == "${{ env.UV_VERSION }}", name


def test_every_make_command_names_an_existing_target() -> None:
    targets = makefile_targets()
    commands = [args for _, _, args in workflow_runs()] + [args for _, args in ci_script_runs()]
    assert commands
    for args in commands:
        assert targets_of(args), f"make {' '.join(args)} names no target"
        assert set(targets_of(args)) <= targets, f"make {' '.join(args)}: unknown target"
        for variable in (arg.partition("=")[0] for arg in args if "=" in arg):
            assert f"$({variable})" in MAKEFILE, f"the Makefile never reads {variable}"


def test_workflow_and_ci_script_run_the_same_make_commands() -> None:
    workflow = {args for _, _, args in workflow_runs()}
    script = {args for _, args in ci_script_runs()}
    assert workflow == script


def test_workflow_and_ci_script_run_the_same_tests_on_the_same_backends() -> None:
    workflow = suite_runs([(env, args) for _, env, args in workflow_runs()])
    script = suite_runs(ci_script_runs())
    assert workflow == script
    assert ("postgresql", ("test", "CHECK_COVERAGE=1")) in {(b, a) for b, a, _ in workflow}


def test_test_jobs_publish_the_services_their_urls_name() -> None:
    test_jobs = {name for name, _, args in workflow_runs() if "test" in targets_of(args)}
    assert test_jobs
    for name in test_jobs:
        job = JOBS[name]
        env = {**WORKFLOW["env"], **job.get("env", {})}
        services = job["services"]
        assert {spec["image"] for spec in services.values()} == {"postgres:16", "redis:7"}
        for service, spec in services.items():
            assert "--health-cmd" in spec["options"], f"{name}: {service} has no health check"
        postgres, redis = services["postgres"], services["redis"]
        assert "TEST_REDIS_URL" in env, name
        assert f"{make_url(env['TEST_REDIS_URL']).port}:6379" in redis["ports"], name
        for variable in ("TEST_POSTGRES_URL", "TEST_DATABASE_URL"):
            if variable not in env:
                continue
            url = make_url(env[variable])
            assert f"{url.port}:5432" in postgres["ports"], f"{name}: {variable}"
            assert url.password == postgres["env"]["POSTGRES_PASSWORD"], f"{name}: {variable}"
            assert url.database == postgres["env"]["POSTGRES_DB"], f"{name}: {variable}"
        # The fault tests start their own redis-server.
        assert any("redis-server" in step.get("run", "") for step in job["steps"]), name


def test_the_postgresql_job_sets_the_test_database_and_redis() -> None:
    postgres_jobs = [
        name
        for name, env, args in workflow_runs()
        if "test" in targets_of(args) and env.get("TEST_DATABASE_URL", "").startswith("postgres")
    ]
    assert len(postgres_jobs) == 1
    env = {**WORKFLOW["env"], **JOBS[postgres_jobs[0]]["env"]}
    assert make_url(env["TEST_DATABASE_URL"]).drivername == "postgresql+asyncpg"
    assert env["TEST_REDIS_URL"].startswith("redis://")


def test_dependabot_updates_python_actions_and_docker_weekly() -> None:
    assert DEPENDABOT["version"] == 2
    updates = {entry["package-ecosystem"]: entry for entry in DEPENDABOT["updates"]}
    assert {"uv", "github-actions", "docker"} <= set(updates)
    for ecosystem, entry in updates.items():
        assert entry["schedule"]["interval"], ecosystem
    assert (ROOT / updates["uv"]["directory"].lstrip("/") / "uv.lock").is_file()
    assert (
        ROOT / updates["github-actions"]["directory"].lstrip("/") / ".github/workflows"
    ).is_dir()
    docker = ROOT / updates["docker"]["directory"].lstrip("/")
    assert (docker / "Dockerfile").is_file()
    # Every Dockerfile in the repository is in a directory Dependabot looks at.
    watched = {
        ROOT / entry["directory"].lstrip("/")
        for entry in DEPENDABOT["updates"]
        if entry["package-ecosystem"] == "docker"
    }
    dockerfiles = [
        path
        for path in ROOT.rglob("Dockerfile*")
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    ]
    assert dockerfiles
    assert {path.parent for path in dockerfiles} <= watched


# The environment running the suite: the project's .venv (or, in a copy of the
# repository made by a test, the one it borrows).
ENVIRONMENT = Path(sys.prefix)


def test_hooks_run_executables_from_the_project_environment() -> None:
    assert HOOKS
    for hook in HOOKS:
        program = shlex.split(hook["entry"])[0]
        if "/" in program:
            assert program.startswith(".venv/bin/"), f"{hook['id']}: {program}"
            path = ENVIRONMENT / "bin" / program.removeprefix(".venv/bin/")
            assert path.is_file(), f"{hook['id']}: {program} does not exist (make install)"
            assert os.access(path, os.X_OK), f"{hook['id']}: {program} is not executable"
        else:
            assert shutil.which(program), f"{hook['id']}: {program} is not on PATH"


def test_hooks_include_ruff_check_ruff_format_and_the_linted_mypy() -> None:
    entries = {hook["id"]: shlex.split(hook["entry"]) + hook.get("args", []) for hook in HOOKS}
    commands = [[Path(entry[0]).name, *entry[1:]] for entry in entries.values()]
    assert any(command[:2] == ["ruff", "check"] for command in commands)
    assert any(command[:2] == ["ruff", "format"] for command in commands)
    mypy = [command for command in commands if command[0] == "mypy"]
    assert len(mypy) == 1
    # The hook types the same packages as `make lint`.
    (linted,) = [command for command in recipe("lint") if command[0] == "mypy"]
    assert mypy[0][1:] == linted[1:]


def test_large_files_are_refused_except_the_lockfile() -> None:
    (hook,) = [hook for hook in HOOKS if hook["id"] == "check-added-large-files"]
    assert "--maxkb=500" in hook["args"]
    exclude = re.compile(hook["exclude"])
    assert exclude.search("uv.lock")
    assert not any(exclude.search(name) for name in ("app/main.py", "docs/uv.lock.png"))


def test_make_hooks_installs_the_pre_commit_hooks() -> None:
    assert "hooks" in makefile_targets()
    assert ["pre-commit", "install"] in recipe("hooks")
    assert "pre-commit" in PRE_COMMIT["default_install_hook_types"]


def test_hooks_pass_on_a_fresh_copy_of_the_repository(tmp_path: Path) -> None:
    venv = ENVIRONMENT
    assert (venv / "bin" / "pre-commit").is_file(), "run make install first"
    repo = copy_repository(tmp_path / "repo")
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env.update(PRE_COMMIT_HOME=str(tmp_path / "pre-commit"), SKIP="mypy")  # make lint types
    git = ["git", "-c", "user.name=forge-test", "-c", "user.email=forge-test@example.com"]
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run([*git, *command], cwd=repo, env=env, check=True, capture_output=True)
    (repo / ".venv").symlink_to(venv)
    result = subprocess.run(
        [".venv/bin/pre-commit", "run", "--all-files", "--show-diff-on-failure"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # uv.lock is added in this fresh repository, so the size check really looked at it.
    assert re.search(r"^no large files\.+Passed$", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("make test", [({}, ("test",))]),
        (
            'A="$X" B=1 make test CHECK_COVERAGE=1',
            [({"A": "$X", "B": "1"}, ("test", "CHECK_COVERAGE=1"))],
        ),
        ("sudo apt-get update && make install; echo done", [({}, ("install",))]),
        ("# make lint\nmakemigrations", []),
    ],
)
def test_make_runs_reads_shell_commands(script: str, expected: list[MakeRun]) -> None:
    assert make_runs(script) == expected

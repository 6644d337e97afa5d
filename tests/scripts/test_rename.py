"""scripts/rename on a copy of the repository: the new name everywhere the old one was,
a second run changes nothing, and the renamed project's own checks still pass."""

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.parsing import project_slug
from tests.support import ROOT, copy_repository, uv_executable

SKIPPED_DIRS = {".git", ".venv", ".tools", "__pycache__", ".mypy_cache", ".ruff_cache"}


def old_names() -> tuple[str, str]:
    title = (ROOT / "README.md").read_text().splitlines()[0].removeprefix("# ")
    return title, project_slug()


def new_names() -> tuple[str, str]:
    """A name the project does not have yet (a fork may already be "Orders API")."""
    for name, slug in (("Orders API", "orders-api"), ("Billing Service", "billing-service")):
        if slug != project_slug() and name != old_names()[0]:
            return name, slug
    raise AssertionError("unreachable: two distinct candidates")


NEW_NAME, NEW_SLUG = new_names()


def rename(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(repo / "scripts" / "rename"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def fingerprint(repo: Path) -> dict[str, str]:
    return {
        str(path.relative_to(repo)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(repo.rglob("*"))
        if path.is_file() and not SKIPPED_DIRS & set(path.relative_to(repo).parts)
    }


def files_mentioning(repo: Path, *needles: str) -> list[str]:
    found = []
    for name in fingerprint(repo):
        text = (repo / name).read_text(errors="replace")
        if any(needle in text for needle in needles):
            found.append(name)
    return found


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repository(tmp_path)


@pytest.fixture(scope="module")
def renamed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repository(tmp_path_factory.mktemp("fork"))
    result = rename(repo, NEW_NAME)
    assert result.returncode == 0, result.stderr
    return repo


def test_dry_run_shows_the_changes_and_writes_nothing(repo: Path) -> None:
    before = fingerprint(repo)
    result = rename(repo, NEW_NAME, "--dry-run")
    assert result.returncode == 0, result.stderr
    old_title, old_slug = old_names()
    assert f"-# {old_title}\n+# {NEW_NAME}\n" in result.stdout
    assert f'-name = "{old_slug}"\n+name = "{NEW_SLUG}"\n' in result.stdout
    assert "would change" in result.stdout
    assert fingerprint(repo) == before


@pytest.mark.parametrize(
    ("args", "reason"),
    [(["  "], "non-empty"), (['Say "hi"'], "plain text"), (["Shop", "--slug", "Shop_2"], "slug")],
)
def test_unusable_names_are_refused_without_changes(
    repo: Path, args: list[str], reason: str
) -> None:
    before = fingerprint(repo)
    result = rename(repo, *args)
    assert result.returncode == 2
    assert reason in result.stderr
    assert fingerprint(repo) == before


def test_rename_replaces_every_occurrence_and_is_idempotent(repo: Path) -> None:
    old_title, old_slug = old_names()
    assert files_mentioning(repo, old_title, old_slug)
    result = rename(repo, NEW_NAME)
    assert result.returncode == 0, result.stderr
    assert files_mentioning(repo, old_title, old_slug) == []
    assert (repo / "README.md").read_text().startswith(f"# {NEW_NAME}\n")
    assert f'name = "{NEW_SLUG}"' in (repo / "pyproject.toml").read_text()
    assert f'PROJECT_NAME="{NEW_NAME}"' in (repo / ".env.example").read_text()
    assert re.search(rf"^name: {NEW_SLUG}$", (repo / "docker/docker-compose.yml").read_text(), re.M)
    assert f"name: {NEW_SLUG}-api" in (repo / "docker/k8s/api-deployment.yaml").read_text()

    renamed = fingerprint(repo)
    again = rename(repo, NEW_NAME)
    assert again.returncode == 0
    assert "Nothing to change" in again.stdout
    assert fingerprint(repo) == renamed


def test_renamed_project_passes_its_own_checks(renamed_repo: Path) -> None:
    repo = renamed_repo
    lock = subprocess.run(
        [uv_executable(), "lock", "--check", "--offline"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lock.returncode == 0, lock.stderr
    # The subset that reads the renamed files: the compose/Kubernetes/Dockerfile checks
    # (names, images, labels and env derive from pyproject and .env.example) and the
    # settings tests (PROJECT_NAME default, .env.example). The rest of the suite never
    # sees the name, and running tests/scripts here would copy the repository again.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/deploy", "tests/core/test_config.py", "tests/test_makefile.py"],
        cwd=repo, capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert suite.returncode == 0, suite.stdout[-3000:]
    assert re.search(r"\d+ passed", suite.stdout)
    assert "skipped" not in suite.stdout

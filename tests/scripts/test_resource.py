"""`make resource`: the names it accepts, and a generated resource that passes the
project's own checks and tests with no edit, on a copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import resource
from tests.support import ROOT, copy_repository

PYTHON = sys.executable


@pytest.mark.parametrize(
    ("name", "singular", "expected"),
    [
        ("orders", None, ("orders", "order", "Order", "/orders")),
        ("order_lines", None, ("order_lines", "order_line", "OrderLine", "/order-lines")),
        ("invoices", None, ("invoices", "invoice", "Invoice", "/invoices")),
        ("categories", "category", ("categories", "category", "Category", "/categories")),
        ("addresses", "address", ("addresses", "address", "Address", "/addresses")),
        ("people", "person", ("people", "person", "Person", "/people")),
    ],
)
def test_names_derive_module_class_and_path(
    name: str, singular: str | None, expected: tuple[str, str, str, str]
) -> None:
    names = resource.resolve(name, singular)
    assert (names.plural, names.singular, names.model, f"/{names.path}") == expected


@pytest.mark.parametrize(
    ("name", "singular", "message"),
    [
        ("Orders", None, "lower-case letters"),
        ("order-lines", None, "lower-case letters"),
        ("orders__x", None, "single underscores"),
        ("2orders", None, "start with a letter"),
        ("../orders", None, "lower-case letters"),
        ("o" * 30 + "s", None, "at most 30"),
        ("people", None, "cannot tell the singular"),
        ("caches", None, "cannot tell the singular"),
        ("movies", None, "cannot tell the singular"),
        ("statuses", None, "cannot tell the singular"),
        ("classes", "class", "needs itself"),
        ("sessions", None, "needs itself"),
        ("sheep", "sheep", "both 'sheep'"),
    ],
)
def test_bad_names_are_refused_with_a_reason(name: str, singular: str | None, message: str) -> None:
    with pytest.raises(resource.ResourceError, match=message):
        resource.resolve(name, singular)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".venv" not in path.parts and "__pycache__" not in path.parts
    }


def _run(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=root, capture_output=True, text=True, check=False, env=os.environ.copy()
    )


@pytest.fixture(scope="module")
def fork(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository as a fork starts it, sharing this run's environment."""
    root = copy_repository(tmp_path_factory.mktemp("fork"))
    (root / ".venv").symlink_to(ROOT / ".venv")
    if (ROOT / ".mypy_cache").is_dir():  # a warm cache: mypy re-checks only what changed
        shutil.copytree(ROOT / ".mypy_cache", root / ".mypy_cache")
    return root


def test_dry_run_lists_the_files_and_writes_nothing(fork: Path) -> None:
    before = _snapshot(fork)
    done = _run(fork, PYTHON, "-m", "scripts.resource", "invoices", "--dry-run")
    assert done.returncode == 0, done.stderr
    for path in (
        "app/models/invoice.py",
        "app/schemas/invoice.py",
        "app/services/invoices.py",
        "app/api/v1/invoices.py",
        "tests/api/v1/test_invoices.py",
        "app/api/v1/router.py",
        "migrations/versions/<date>_<revision>_add_invoices.py",
    ):
        assert f"  {path}\n" in done.stdout
    assert _snapshot(fork) == before


def test_an_existing_resource_is_never_overwritten(fork: Path) -> None:
    before = _snapshot(fork)
    for name in ("items", "jobs"):
        done = _run(fork, PYTHON, "-m", "scripts.resource", name)
        assert done.returncode == 2
        assert "already exists; nothing was written" in done.stderr
    assert _snapshot(fork) == before


def test_a_generated_resource_passes_lint_and_its_tests(fork: Path) -> None:
    done = _run(fork, PYTHON, "-m", "scripts.resource", "orders")
    assert done.returncode == 0, done.stdout + done.stderr
    router = (fork / "app/api/v1/router.py").read_text()
    assert '(orders.router, ""),' in router
    assert (fork / "app/models/__init__.py").read_text().count("Order") == 2
    (migration,) = (fork / "migrations/versions").glob("*_add_orders.py")
    assert 'op.create_table(\n        "orders"' in migration.read_text()

    again = _run(fork, PYTHON, "-m", "scripts.resource", "orders")
    assert again.returncode == 2
    assert "app/models/order.py already exists" in again.stderr

    for check in (("ruff", "check", "."), ("ruff", "format", "--check", ".")):
        linted = _run(fork, PYTHON, "-m", *check)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    typed = _run(fork, PYTHON, "-m", "mypy", "app", "scripts", "tests")
    assert typed.returncode == 0, typed.stdout + typed.stderr
    # The new tests, the migrations against the models, and the OpenAPI document (which
    # the scaffold regenerated) on whichever database this run uses.
    tested = _run(
        fork,
        PYTHON,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--no-cov",
        "tests/api/v1/test_orders.py",
        "tests/test_migrations.py",
        "tests/api/test_openapi.py",
    )
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-2000:]
    assert " passed" in tested.stdout

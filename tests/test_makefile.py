"""The Makefile: every target is listed by `make help`, `make secret` is usable, and
`make migrate m=...` works on a database that is not up to date yet."""

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from app.core.config import Environment, load_settings
from tests.support import ROOT, copy_repository, production_config, uv_executable

MAKEFILE = (ROOT / "Makefile").read_text()


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def test_help_lists_every_target() -> None:
    targets = set(re.findall(r"^([a-z][a-z_-]*):", MAKEFILE, re.MULTILINE))
    phony = set(re.search(r"^\.PHONY: (.+)$", MAKEFILE, re.MULTILINE)[1].split())  # type: ignore[index]
    assert targets == phony
    listed = set(re.findall(r"^\s+(?:\x1b\[\d+m)?([a-z][a-z_-]*)", make("help"), re.MULTILINE))
    assert listed == targets
    assert {"up", "down", "secret", "rename", "prestart", "image"} <= listed


def test_secret_prints_a_fresh_key_production_accepts() -> None:
    first, second = make("secret").strip(), make("secret").strip()
    assert first != second
    assert len(first) >= 48
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first)
    settings = load_settings(
        _env_file=None,
        ENVIRONMENT="production",
        SECRET_KEY=first,
        DATABASE_URL="postgresql://app@db/app",
        **production_config(),
    )
    assert settings.ENVIRONMENT is Environment.PRODUCTION


def test_up_starts_the_compose_stack_and_says_where_the_api_and_docs_are() -> None:
    planned = make("--dry-run", "up")
    assert "docker compose -f docker/docker-compose.yml up -d --build" in planned
    compose = (ROOT / "docker" / "docker-compose.yml").read_text()
    port = re.search(r'"(\d+):8000"', compose)
    assert port is not None
    assert f"http://localhost:{port[1]}/docs" in planned
    assert f"http://localhost:{port[1]}/api/v1/public/health" in planned


NOTE_MODEL = '''"""The `notes` table (a model a fork adds)."""

from typing import ClassVar

from sqlmodel import Field

from app.models.base import BaseTable


class Note(BaseTable, table=True):
    __tablename__: ClassVar[str] = "notes"

    body: str = Field(max_length=500)
'''


def test_migrate_with_a_message_on_a_fresh_database_generates_only_the_new_table(
    tmp_path: Path,
) -> None:
    # A fresh clone: no database yet, and a model added the way the README describes.
    repo = copy_repository(tmp_path / "fork")
    (repo / ".venv").symlink_to(sys.prefix)
    (repo / "app" / "models" / "note.py").write_text(NOTE_MODEL)
    with (repo / "app" / "models" / "__init__.py").open("a") as models:
        models.write("from app.models.note import Note  # noqa: E402, F401\n")
    versions = repo / "migrations" / "versions"
    before = set(versions.glob("*.py"))
    database = tmp_path / "fresh.db"
    result = subprocess.run(
        # `-o install`: the copy's .venv is this environment; syncing it would remove
        # whatever the developer installed by hand.
        [
            "make",
            "--no-print-directory",
            "-o",
            "install",
            "migrate",
            "m=add notes",
            f"UV={uv_executable()}",
        ],
        cwd=repo,
        env={"PATH": os.environ["PATH"], "DATABASE_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (revision,) = set(versions.glob("*.py")) - before
    assert revision.name.endswith("_add_notes.py")
    script = revision.read_text()
    assert '"notes"' in script
    assert '"items"' not in script
    assert '"users"' not in script
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"users", "items", "notes", "alembic_version"} <= tables


def fork_with_this_environment(tmp_path: Path) -> Path:
    """A copy of the repository (no `.env`) whose `.venv` is this environment."""
    repo = copy_repository(tmp_path / "fork")
    (repo / ".venv").symlink_to(sys.prefix)
    return repo


def run_make(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", "-o", "install", *args, f"UV={uv_executable()}"],
        cwd=repo,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_worker_without_redis_stops_at_once_with_the_reason(tmp_path: Path) -> None:
    result = run_make(fork_with_this_environment(tmp_path), "worker")
    assert result.returncode != 0
    assert "REDIS_URL must be set" in result.stderr


def test_token_prints_only_the_token_on_stdout(tmp_path: Path) -> None:
    """`TOKEN=$(make -s token ...)` must capture a token, not progress messages."""
    result = run_make(fork_with_this_environment(tmp_path), "token", "sub=alice", "roles=admin")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+\n", result.stdout), result.stdout


def test_two_make_commands_started_together_share_one_environment(tmp_path: Path) -> None:
    """The README starts `make dev` and then `make -s token`: creating `.venv` twice at
    once must not fail either of them."""
    repo = copy_repository(tmp_path / "fork")
    command = ["make", "--no-print-directory", "-s", "venv", f"UV={uv_executable()}"]
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    runs = [
        subprocess.Popen(command, cwd=repo, env=environment, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    failures = [run.communicate(timeout=60)[1] for run in runs if run.wait(timeout=60) != 0]
    assert failures == []
    assert (repo / ".venv" / "bin" / "python").exists()

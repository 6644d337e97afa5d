"""The Makefile: every target is listed by `make help`, and `make secret` is usable."""

import re
import subprocess

from app.core.config import Environment, load_settings
from tests.support import ROOT, production_auth

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
        **production_auth(),
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

"""Test plumbing: service selection, temporary databases, running apps, stub servers,
and tokens for the local auth provider."""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import Receive, Scope, Send

from app.core.config import Settings, normalise_database_url
from app.core.local_issuer import LocalIssuer, generate_private_key_pem
from app.main import create_app

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
# A PostgreSQL server for the tests that need one whatever the suite's backend (fault
# injection): TEST_POSTGRES_URL, else TEST_DATABASE_URL when that is PostgreSQL.
TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "") or (
    TEST_DATABASE_URL if TEST_DATABASE_URL.startswith("postgres") else ""
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
# A loopback port nothing listens on: connections are refused at once.
CLOSED_PORT_URL = "127.0.0.1:9"
ROOT = Path(__file__).resolve().parent.parent
# Names under this `.env.example` header (up to the next `# ---` header) configure the
# container and scripts, not the app, so they are not Settings fields.
INFRASTRUCTURE_HEADER = "# --- Infrastructure"
# What a fresh fork does not have: environments, caches, local databases and secrets.
LOCAL_STATE = (".git", ".venv", ".tools", "__pycache__", ".mypy_cache", ".ruff_cache",
               ".pytest_cache", "*.db", ".env", ".secrets", "exports")  # fmt: skip


def env_example_names(path: Path = ROOT / ".env.example") -> tuple[list[str], list[str]]:
    """The variables `.env.example` documents: (app settings, infrastructure variables)."""
    app: list[str] = []
    infrastructure: list[str] = []
    section = app
    for line in path.read_text().splitlines():
        if line.startswith("# ---"):
            section = infrastructure if line.startswith(INFRASTRUCTURE_HEADER) else app
        elif line and not line.startswith("#"):
            section.append(line.split("=", 1)[0])
    return app, infrastructure


def require_program(name: str, package: str) -> str:
    """The path of a program a test runs; skip (or, in CI, fail) when it is missing."""
    binary = shutil.which(name)
    if binary is None:
        reason = f"{name} is not installed (Debian package `{package}`)"
        if IN_CI:
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)
    return binary


def require_service(variable: str, value: str) -> str:
    """Skip (or, in CI, fail) a test whose real service is not configured."""
    if value:
        return value
    if IN_CI:
        pytest.fail(f"{variable} must be set in CI: service-backed tests may not skip")
    pytest.skip(f"{variable} is not set; set it to run tests against a real service")


@functools.cache
def local_private_key() -> str:
    """The local provider's signing key for this test run (generated once, never on disk)."""
    return generate_private_key_pem("RS256").decode()


def local_public_key() -> str:
    key = serialization.load_pem_private_key(local_private_key().encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def production_config() -> dict[str, str]:
    """Production-valid identity provider, file storage and mail settings that need no
    network (Clerk with a PEM key; a directory, explicitly allowed; no mail)."""
    return {
        "AUTH_PROVIDER": "clerk",
        "CLERK_ISSUER": "https://clerk.example.com",
        "CLERK_JWT_KEY": local_public_key(),
        "CLERK_AUTHORIZED_PARTIES": "https://app.example.com",
        "STORAGE_FILESYSTEM_IN_PRODUCTION": "true",
        "EMAIL_BACKEND": "none",
    }


@functools.cache
def _scratch_storage() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="test-storage-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return directory


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ENVIRONMENT": "test",
        "AUTH_PROVIDER": "local",
        "LOCAL_AUTH_PRIVATE_KEY": local_private_key(),
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "HEALTH_CHECK_TIMEOUT": 1.0,
        "DB_POOL_SIZE": 5,
        "DB_USE_NULL_POOL": False,
        # Tests that look at metrics pick a free port; the rest serve none.
        "METRICS_PORT": 0,
        "WORKER_METRICS_PORT": 0,
        # Files of tests that do not look at them: out of the working tree.
        "STORAGE_DIR": str(_scratch_storage()),
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@functools.lru_cache(maxsize=8)
def _local_issuer(private_key: str, algorithm: str) -> LocalIssuer:
    settings = Settings(
        _env_file=None, LOCAL_AUTH_PRIVATE_KEY=private_key, LOCAL_AUTH_ALGORITHM=algorithm
    )
    return LocalIssuer.from_settings(settings)


def local_token(
    settings: Settings,
    sub: str = "u1",
    *,
    email: str | None = None,
    roles: Iterable[str] = (),
    tenant: str | None = None,
    **claims: Any,
) -> str:
    """A token the app built from `settings` (local provider) accepts."""
    assert settings.LOCAL_AUTH_PRIVATE_KEY is not None, "settings need LOCAL_AUTH_PRIVATE_KEY"
    issuer = _local_issuer(
        settings.LOCAL_AUTH_PRIVATE_KEY.get_secret_value(), settings.LOCAL_AUTH_ALGORITHM
    )
    return issuer.issue_token(
        sub, email=email, roles=roles, tenant_id=tenant, extra_claims=claims or None
    )


def auth_headers(
    settings: Settings,
    sub: str = "u1",
    *,
    email: str | None = None,
    roles: Iterable[str] = (),
    tenant: str | None = None,
    **claims: Any,
) -> dict[str, str]:
    """`Authorization` headers for a caller of an app running the local provider."""
    token = local_token(settings, sub, email=email, roles=roles, tenant=tenant, **claims)
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(
    response: Any, www_authenticate: str = 'Bearer error="invalid_token"'
) -> dict[str, Any]:
    """A 401 in the standard error shape with the given challenge; returns the body."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == www_authenticate
    body: dict[str, Any] = response.json()
    assert set(body["error"]) == {"code", "message", "request_id", "details"}
    assert body["error"]["code"] == "unauthenticated"
    return body


@asynccontextmanager
async def temporary_database(
    tmp_dir: Path, server_url: str = TEST_DATABASE_URL
) -> AsyncIterator[str]:
    """A new, empty database on the suite's backend (or on `server_url`), dropped afterwards."""
    if not server_url:
        path = tmp_dir / f"{uuid.uuid4().hex}.db"
        yield f"sqlite+aiosqlite:///{path}"
        return
    server = make_url(normalise_database_url(server_url))
    # Named after the URL's database (which must exist: CREATE DATABASE runs there).
    name = f"{server.database or 'test'}_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


class WithLifespanState:
    """Hands the lifespan's state to each request, as an ASGI server would."""

    def __init__(self, app: FastAPI, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


@asynccontextmanager
async def running_app(
    settings: Settings, app: FastAPI | None = None
) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    """Run `create_app(settings)` (or `app`) through its lifespan with a client bound to it."""
    app = app or create_app(settings)
    async with app.router.lifespan_context(app) as state:
        transport = ASGITransport(app=WithLifespanState(app, dict(state or {})))
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


class Clock:
    """A monotonic clock the test moves by hand (for TTLs and cooldowns, without sleeping)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def hung_server() -> AsyncIterator[str]:
    """A loopback TCP server that accepts connections and never answers; yields host:port."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_until(stream: asyncio.StreamReader, marker: str) -> str:
    """Read a subprocess's output line by line until `marker` appears; return all of it."""
    seen = ""
    while marker not in seen:
        line = await stream.readline()
        assert line, f"the process ended before writing {marker!r}:\n{seen}"
        seen += line.decode()
    return seen


def copy_repository(target: Path) -> Path:
    """The files a fork starts from: tracked plus new unignored files (git), else a tree copy."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        ignore = shutil.ignore_patterns(*LOCAL_STATE)
        shutil.copytree(ROOT, target, ignore=ignore, symlinks=True)
        return target
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def uv_executable() -> str:
    """uv from PATH, else the copy `make` bootstrapped next to this interpreter's .venv."""
    return shutil.which("uv") or str(Path(sys.prefix).parent / ".tools" / "bin" / "uv")

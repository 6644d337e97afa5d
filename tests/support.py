"""Test plumbing: service selection, temporary databases, running apps, stub servers."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import Receive, Scope, Send

from app.core.config import Settings, normalise_database_url
from app.main import create_app

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
# A loopback port nothing listens on: connections are refused at once.
CLOSED_PORT_URL = "127.0.0.1:9"
ROOT = Path(__file__).resolve().parent.parent
# Names under this `.env.example` header (up to the next `# ---` header) configure the
# container and scripts, not the app, so they are not Settings fields.
INFRASTRUCTURE_HEADER = "# --- Infrastructure"


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


def require_service(variable: str, value: str) -> str:
    """Skip (or, in CI, fail) a test whose real service is not configured."""
    if value:
        return value
    if IN_CI:
        pytest.fail(f"{variable} must be set in CI: service-backed tests may not skip")
    pytest.skip(f"{variable} is not set; set it to run tests against a real service")


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "HEALTH_CHECK_TIMEOUT": 1.0,
        "DB_POOL_SIZE": 5,
        "DB_USE_NULL_POOL": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def temporary_database(tmp_dir: Path) -> AsyncIterator[str]:
    """A new, empty database on the suite's backend, dropped afterwards."""
    if not TEST_DATABASE_URL:
        path = tmp_dir / f"{uuid.uuid4().hex}.db"
        yield f"sqlite+aiosqlite:///{path}"
        return
    server = make_url(normalise_database_url(TEST_DATABASE_URL))
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


class _WithLifespanState:
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
        transport = ASGITransport(app=_WithLifespanState(app, dict(state or {})))
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


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

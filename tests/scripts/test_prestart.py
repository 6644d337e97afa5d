"""scripts/prestart.py, run as the container runs it, against the suite's database backend:
one that comes up after the first attempts fail, and ones that never come up."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tests.support import (
    CLOSED_PORT_URL,
    ROOT,
    free_port,
    hung_server,
    read_until,
    temporary_database,
)
from tests.test_migrations import table_names

GIVE_UP = "unreachable after 3 attempts"


def prestart_env(database_url: str) -> dict[str, str]:
    # Run from a scratch directory (no developer .env) with the repository importable.
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "ENVIRONMENT": "test",
        "LOG_FORMAT": "console",
        "DATABASE_URL": database_url,
    }


async def start_prestart(database_url: str, cwd: Path, *options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.prestart",
        *options,
        env=prestart_env(database_url),
        cwd=cwd,
        stderr=asyncio.subprocess.PIPE,
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def forward_to(host: str, port: int) -> Callable[..., Awaitable[None]]:
    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, port)
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    return forward


LateDatabase = tuple[str, Callable[[], Awaitable[None]], str]


@asynccontextmanager
async def late_database(tmp_path: Path) -> AsyncIterator[LateDatabase]:
    """(URL prestart gets, a coroutine that brings it up, URL of the real database).

    PostgreSQL: nothing listens on the URL's port until a proxy to the real server starts.
    SQLite: the database file's directory does not exist until it is created.
    """
    async with temporary_database(tmp_path) as real_url:
        url = make_url(real_url)
        if url.get_backend_name() == "sqlite":
            late_dir = tmp_path / "not-yet"
            late_url = url.set(database=str(late_dir / "app.db")).render_as_string(False)

            async def create_directory() -> None:
                late_dir.mkdir()

            yield late_url, create_directory, late_url
            return
        port = free_port()
        proxies: list[asyncio.Server] = []

        async def start_proxy() -> None:
            forward = forward_to(url.host or "127.0.0.1", url.port or 5432)
            proxies.append(await asyncio.start_server(forward, "127.0.0.1", port))

        try:
            yield (
                url.set(host="127.0.0.1", port=port).render_as_string(False),
                start_proxy,
                real_url,
            )
        finally:
            for proxy in proxies:
                proxy.close()


async def test_waits_for_a_database_that_comes_up_late_then_migrates(tmp_path: Path) -> None:
    async with late_database(tmp_path) as (url, bring_up, real_url):
        process = await start_prestart(url, tmp_path, "--attempts", "100", "--interval", "0.1")
        assert process.stderr is not None
        async with asyncio.timeout(60):
            await read_until(process.stderr, "database not ready (attempt 1/100)")
            await bring_up()
            _, rest = await process.communicate()
        assert process.returncode == 0, rest.decode()
        assert "is up (attempt" in rest.decode()
        assert "migrations applied" in rest.decode()
        assert "alembic_version" in await table_names(real_url)


async def run_to_failure(url: str, tmp_path: Path, *options: str) -> tuple[int | None, str]:
    process = await start_prestart(url, tmp_path, "--attempts", "3", "--interval", "0.05", *options)
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    return process.returncode, stderr.decode()


async def test_gives_up_on_a_refusing_database_with_a_clear_error(tmp_path: Path) -> None:
    url = f"postgresql://app:hunter2-secret@{CLOSED_PORT_URL}/app"
    code, stderr = await run_to_failure(url, tmp_path)
    assert code == 1
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith("prestart: database postgresql+asyncpg://app:***@127.0.0.1:9/app")
    assert GIVE_UP in last_line
    assert "ConnectionRefusedError" in last_line
    assert stderr.count("database not ready") == 2
    assert "hunter2-secret" not in stderr


async def test_gives_up_on_a_database_that_never_answers(tmp_path: Path) -> None:
    async with hung_server() as address:
        code, stderr = await run_to_failure(
            f"postgresql://app@{address}/app", tmp_path, "--timeout", "0.2"
        )
    assert code == 1
    assert GIVE_UP in stderr
    assert "TimeoutError" in stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("database_url", "options", "reason"),
    [
        ("mysql://u@h/d", [], "DATABASE_URL"),
        ("postgresql://u@127.0.0.1:9/d", ["--attempts", "0"], "--attempts must be greater than 0"),
    ],
)
async def test_bad_configuration_exits_2_naming_the_problem(
    tmp_path: Path, database_url: str, options: list[str], reason: str
) -> None:
    process = await start_prestart(database_url, tmp_path, *options)
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert reason in stderr.decode()


async def test_shell_entry_runs_the_module() -> None:
    process = await asyncio.create_subprocess_exec(
        str(ROOT / "scripts" / "prestart"), "--help", stdout=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        stdout, _ = await process.communicate()
    assert process.returncode == 0
    assert "Wait for the database, then apply migrations" in stdout.decode()

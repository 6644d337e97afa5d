"""Fixtures: one database per test run, emptied after every test, and a fresh app per test.

The database is SQLite in a temporary directory unless `TEST_DATABASE_URL` names a
PostgreSQL server, in which case a uniquely named database is created on it (and
dropped at the end), so the suite never touches a developer's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

from app.core.config import Settings
from app.core.db import create_engine, init_db
from tests.s3 import create_bucket, filesystem_overrides, moto_server, s3_overrides
from tests.support import (
    TEST_POSTGRES_URL,
    TEST_REDIS_URL,
    make_settings,
    require_service,
    running_app,
    temporary_database,
)
from tests.tables import scratch_tables


@pytest.fixture(scope="session")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with temporary_database(tmp_path_factory.mktemp("db")) as url:
        engine = create_engine(make_settings(url))
        await init_db(engine)
        await engine.dispose()
        yield url


@pytest.fixture(scope="session")
async def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A PostgreSQL database with the app's tables whatever the suite's backend, for the
    tests only PostgreSQL can run (fault injection, row locks); from TEST_POSTGRES_URL."""
    server = require_service("TEST_POSTGRES_URL", TEST_POSTGRES_URL)
    async with temporary_database(tmp_path_factory.mktemp("pg"), server) as url:
        engine = create_engine(make_settings(url))
        await init_db(engine)
        await engine.dispose()
        yield url


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on `postgres_url`, its tables emptied after the test."""
    engine = create_engine(make_settings(postgres_url))
    yield engine
    async with engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await conn.execute(table.delete())
    await engine.dispose()


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_settings(database_url))
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def s3_endpoint() -> AsyncIterator[str]:
    """The URL of an S3-compatible server (moto) running for the whole test run."""
    async with moto_server() as url:
        yield url


@pytest.fixture(params=["filesystem", "s3"])
async def storage_overrides(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str
) -> dict[str, Any]:
    """Settings for each storage backend in turn: a temporary directory, then a fresh
    bucket on the test S3 server."""
    if request.param == "filesystem":
        return filesystem_overrides(tmp_path / "storage")
    return s3_overrides(s3_endpoint, await create_bucket(s3_endpoint))


@pytest.fixture
async def clean_db(db_engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with db_engine.begin() as conn:
        for table in reversed(SQLModel.metadata.sorted_tables):
            await conn.execute(table.delete())


@pytest.fixture
async def tables(db_engine: AsyncEngine) -> AsyncIterator[None]:
    """The test-only tables of tests/tables.py, created for one test."""
    async with scratch_tables(db_engine):
        yield


@pytest.fixture(scope="session", autouse=True)
async def _leave_the_test_redis_as_found() -> AsyncIterator[None]:
    """Delete, at the end of the run, every key the run added to TEST_REDIS_URL's
    database (jobs, queues, cache entries, rate-limit buckets)."""
    if not TEST_REDIS_URL:
        yield
        return
    redis = Redis.from_url(TEST_REDIS_URL)
    try:
        before = {key async for key in redis.scan_iter(count=1000)}
        yield
        added = [key async for key in redis.scan_iter(count=1000) if key not in before]
        for start in range(0, len(added), 500):
            await redis.delete(*added[start : start + 500])
    finally:
        await redis.aclose()


@pytest.fixture
def redis_url() -> str:
    return require_service("TEST_REDIS_URL", TEST_REDIS_URL)


@pytest.fixture
def settings(database_url: str, clean_db: None) -> Settings:
    return make_settings(database_url)


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    async with running_app(settings) as pair:
        yield pair


@pytest.fixture
def client(app_client: tuple[FastAPI, AsyncClient]) -> AsyncClient:
    return app_client[1]

"""Item exports end to end: API -> queue -> in-process worker -> CSV download."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import select, update
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import BACKOFF_SECONDS, create_redis
from app.core.config import Settings
from app.core.db import create_session_factory, session_context
from app.jobs.exports import export_items
from app.jobs.purge import purge_soft_deleted
from app.jobs.queue import JobQueue
from app.models.base import utcnow
from app.models.item import Item
from app.resources import OwnerScope
from app.services.item_exports import export_items_csv
from app.services.items import ItemFilters
from tests.faults import redis_server
from tests.jobs.conftest import job_settings, relay_now, run_worker
from tests.support import auth_headers, make_settings, running_app

ITEMS = "/api/v1/items"


@pytest.fixture
def settings(database_url: str, redis_url: str, clean_db: None, tmp_path: Path) -> Settings:
    # Callers here have fixed names and Redis is shared between test runs: these tests
    # are not about limits, so the export budget is out of the way.
    return job_settings(
        database_url,
        redis_url,
        EXPORT_DIR=str(tmp_path / "exports"),
        RATE_LIMIT_EXPORTS="10000/minute",
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


RUN = uuid.uuid4().hex[:8]


def caller(settings: Settings, sub: str, tenant: str | None = "acme") -> dict[str, str]:
    """A caller unique to this test run: rate-limit budgets live in the shared Redis."""
    return auth_headers(settings, f"{sub}-{RUN}", tenant=tenant)


async def add(client: AsyncClient, headers: dict[str, str], title: str, **fields: Any) -> str:
    response = await client.post(ITEMS, json={"title": title, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    item_id: str = response.json()["id"]
    return item_id


async def test_export_writes_the_callers_filtered_items_as_csv(
    client: AsyncClient, settings: Settings
) -> None:
    alice = caller(settings, "alice")
    wanted = {
        await add(client, alice, "=HYPERLINK(evil)", status="active", tags=["x", "y"]),
        await add(client, alice, "plain", status="active", description='two\nlines, quoted "'),
    }
    await add(client, alice, "archived one", status="archived")
    await add(client, caller(settings, "mallory", "evil"), "not yours", status="active")

    response = await client.post(f"{ITEMS}/exports", json={"status": "active"}, headers=alice)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/api/v1/jobs/{job_id}"
    queued = await client.get(response.headers["location"], headers=alice)
    assert queued.json()["status"] == "queued"
    early = await client.get(f"{ITEMS}/exports/{job_id}/download", headers=alice)
    assert early.status_code == 409

    await run_worker(settings, [export_items])

    status = (await client.get(f"/api/v1/jobs/{job_id}", headers=alice)).json()
    assert status["status"] == "complete"
    assert status["result"]["rows"] == 2
    download = await client.get(status["result"]["download_url"], headers=alice)
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert {row["id"] for row in rows} == wanted
    assert sorted(row["title"] for row in rows) == ["'=HYPERLINK(evil)", "plain"]
    assert {row["status"] for row in rows} == {"active"}
    assert {row["tags"] for row in rows} == {"x;y", ""}
    assert {row["description"] for row in rows} == {"", 'two\nlines, quoted "'}
    files = await asyncio.to_thread(lambda: sorted(p.name for p in settings.EXPORT_DIR.iterdir()))
    assert files == [f"items-{job_id}.csv"]  # no partial file left next to it


async def test_only_the_caller_who_asked_sees_the_export(
    client: AsyncClient, settings: Settings
) -> None:
    alice = caller(settings, "alice")
    colleague = caller(settings, "bob")
    job_id = (await client.post(f"{ITEMS}/exports", json={}, headers=alice)).json()["job_id"]
    await run_worker(settings, [export_items])
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=alice)).status_code == 200
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=colleague)).status_code == 404
    download = await client.get(f"{ITEMS}/exports/{job_id}/download", headers=colleague)
    assert download.status_code == 404
    assert (await client.get("/api/v1/jobs/nope", headers=alice)).status_code == 404


async def test_a_caller_moved_to_another_tenant_no_longer_sees_the_export(
    client: AsyncClient, settings: Settings
) -> None:
    in_acme = caller(settings, "alice", "acme")
    in_other = caller(settings, "alice", "other")
    await add(client, in_acme, "acme only")
    job_id = (await client.post(f"{ITEMS}/exports", headers=in_acme)).json()["job_id"]
    await run_worker(settings, [export_items])
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=in_acme)).status_code == 200
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=in_other)).status_code == 404
    download = await client.get(f"{ITEMS}/exports/{job_id}/download", headers=in_other)
    assert download.status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"status": "lost"},
        {"q": "nul\x00"},
        {"created_after": "0001-01-01T00:00:00+01:00"},
        {"created_before": "2024-01-01T00:00:00"},
        {"sort": "title"},
    ],
)
async def test_bad_export_filters_are_422(
    client: AsyncClient, settings: Settings, body: dict[str, Any]
) -> None:
    headers = caller(settings, f"alice-{uuid.uuid4().hex}")
    response = await client.post(f"{ITEMS}/exports", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_a_failed_export_leaves_no_file_behind(
    db_engine: AsyncEngine, tmp_path: Path
) -> None:
    path = tmp_path / "out" / "items-job.csv"
    scope = OwnerScope("acme", "local", "alice")
    # The query fails once the file is open: naive datetimes are refused by the column type.
    broken = ItemFilters(created_after=datetime(2024, 1, 1))

    async def export() -> None:
        async with session_context(create_session_factory(db_engine)) as session:
            await export_items_csv(session, scope, broken, path)

    with pytest.raises(StatementError):
        await export()
    assert await asyncio.to_thread(lambda: list(path.parent.iterdir())) == []


async def test_export_without_a_job_queue_is_a_503(database_url: str, clean_db: None) -> None:
    settings = make_settings(database_url, REDIS_URL="")
    async with running_app(settings) as (_, client):
        headers = caller(settings, "alice")
        response = await client.post(f"{ITEMS}/exports", json={}, headers=headers)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "service_unavailable"
        assert (await client.get(ITEMS, headers=headers)).status_code == 200


async def test_an_export_accepted_while_redis_is_down_runs_once_redis_is_back(
    database_url: str, clean_db: None, db_engine: AsyncEngine, tmp_path: Path
) -> None:
    async with redis_server() as redis:
        settings = job_settings(database_url, redis.url, EXPORT_DIR=str(tmp_path / "exports"))
        async with running_app(settings) as (_, client):
            alice, bob = caller(settings, "alice"), caller(settings, "bob")
            await add(client, alice, "kept safe")
            await redis.kill()

            response = await client.post(f"{ITEMS}/exports", json={}, headers=alice)
            assert response.status_code == 202
            status_url = response.headers["location"]
            job_id = response.json()["job_id"]
            status = await client.get(status_url, headers=alice)
            assert (status.status_code, status.json()["status"]) == (200, "queued")
            download = f"{ITEMS}/exports/{job_id}/download"
            assert (await client.get(download, headers=alice)).status_code == 409
            # Not bob's in the outbox, and Redis, which might hold a job of his, is down.
            assert (await client.get(status_url, headers=bob)).status_code == 503

            await redis.start()
            await asyncio.sleep(BACKOFF_SECONDS)  # the app leaves Redis alone until then
            assert (await client.get(status_url, headers=alice)).json()["status"] == "queued"
            assert await relay_now(settings, db_engine) == 1
            worker = await run_worker(settings, [export_items])
            assert worker.jobs_complete == 1
            status = await client.get(status_url, headers=alice)
            assert status.json()["status"] == "complete"
            assert status.json()["result"]["rows"] == 1
            assert (await client.get(status_url, headers=bob)).status_code == 404
            csv_file = await client.get(download, headers=alice)
            assert csv_file.status_code == 200
            assert [row["title"] for row in csv.DictReader(io.StringIO(csv_file.text))] == [
                "kept safe"
            ]


async def test_purge_removes_exactly_the_expired_soft_deleted_items(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    alice = caller(settings, "alice")
    expired = await add(client, alice, "old")
    recent = await add(client, alice, "new")
    live = await add(client, alice, "live")
    for item_id in (expired, recent):
        assert (await client.delete(f"{ITEMS}/{item_id}", headers=alice)).status_code == 204
    async with db_engine.begin() as conn:
        await conn.execute(
            update(Item)
            .where(col(Item.id) == uuid.UUID(expired))
            .values(deleted_at=utcnow() - timedelta(days=settings.SOFT_DELETE_RETENTION_DAYS + 1))
        )
    redis = create_redis(settings)
    assert redis is not None
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        await queue.enqueue(purge_soft_deleted)
        await run_worker(settings, [purge_soft_deleted])
    finally:
        await redis.aclose()
    async with db_engine.connect() as conn:
        remaining = set((await conn.execute(select(col(Item.id)))).scalars())
    assert remaining == {uuid.UUID(recent), uuid.UUID(live)}

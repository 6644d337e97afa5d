"""Item exports end to end: API -> queue -> in-process worker -> CSV download."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import insert, select, update
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col

from app.core.cache import BACKOFF_SECONDS, create_redis
from app.core.config import Settings
from app.core.db import create_session_factory, session_context
from app.integrations.storage import create_storage
from app.jobs.exports import export_items, remove_expired_exports
from app.jobs.purge import purge_soft_deleted
from app.jobs.queue import JobQueue
from app.models.attachment import ItemAttachment
from app.models.base import utcnow
from app.models.item import Item
from app.resources import OwnerScope
from app.services.item_exports import export_items_csv, remove_old_exports
from app.services.items import ItemFilters
from tests.faults import redis_server
from tests.jobs.conftest import job_settings, relay_now, run_worker
from tests.s3 import fetch_download, s3_overrides, stored_keys
from tests.support import auth_headers, free_port, make_settings, running_app

ITEMS = "/api/v1/items"


@pytest.fixture
def settings(
    database_url: str, redis_url: str, clean_db: None, storage_overrides: dict[str, Any]
) -> Settings:
    # Callers here have fixed names and Redis is shared between test runs: these tests
    # are not about limits, so the export budget is out of the way.
    return job_settings(
        database_url, redis_url, RATE_LIMIT_EXPORTS="10000/minute", **storage_overrides
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


RUN = uuid.uuid4().hex[:8]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def caller(settings: Settings, sub: str, tenant: str | None = "acme") -> dict[str, str]:
    """A caller unique to this test run: rate-limit budgets live in the shared Redis."""
    return auth_headers(settings, f"{sub}-{RUN}", tenant=tenant)


async def add(client: AsyncClient, headers: dict[str, str], title: str, **fields: Any) -> str:
    response = await client.post(ITEMS, json={"title": title, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    item_id: str = response.json()["id"]
    return item_id


async def test_export_writes_the_callers_filtered_items_as_csv(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
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
    csv_file = await fetch_download(client, status["result"]["download_url"], alice)
    assert csv_file.status_code == 200
    assert csv_file.headers["content-type"].startswith("text/csv")
    assert f'filename="items-{job_id}.csv"' in csv_file.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(csv_file.text)))
    assert {row["id"] for row in rows} == wanted
    assert sorted(row["title"] for row in rows) == ["'=HYPERLINK(evil)", "plain"]
    assert {row["status"] for row in rows} == {"active"}
    assert {row["tags"] for row in rows} == {"x;y", ""}
    assert {row["description"] for row in rows} == {"", 'two\nlines, quoted "'}
    # Stored where the download found it, and no partial file next to it.
    assert await stored_keys(storage_overrides) == [f"exports/items-{job_id}.csv"]


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
    db_engine: AsyncEngine, storage_overrides: dict[str, Any]
) -> None:
    scope = OwnerScope("acme", "local", "alice")
    # The first query fails (the column type refuses naive datetimes) after the CSV
    # header has gone to storage: the file is never completed, so none appears.
    # (A source failing after several S3 parts: tests/integrations/test_storage.py.)
    broken = ItemFilters(created_after=datetime(2024, 1, 1))
    storage = await create_storage(Settings(_env_file=None, **storage_overrides))
    try:
        with pytest.raises(StatementError):
            async with session_context(create_session_factory(db_engine)) as session:
                await export_items_csv(session, scope, broken, storage, "exports/items-job.csv")
    finally:
        await storage.aclose()
    assert await stored_keys(storage_overrides) == []


async def test_expired_exports_are_removed_from_storage(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    await add(client, alice, "one")
    job_id = (await client.post(f"{ITEMS}/exports", headers=alice)).json()["job_id"]
    await run_worker(settings, [export_items])
    url = f"{ITEMS}/exports/{job_id}/download"
    assert (await fetch_download(client, url, alice)).status_code == 200
    storage = await create_storage(settings)
    try:
        await storage.put("exports/other.txt", chunks(b"kept"), content_type="text/plain")
        await storage.put("attachments/a/b", chunks(b"not an export"), content_type="x/y")
        keep = timedelta(seconds=settings.JOB_KEEP_RESULT)
        assert await remove_old_exports(storage, keep, utcnow()) == 0  # not old yet
        later = utcnow() + keep + timedelta(seconds=5)
        assert await remove_old_exports(storage, keep, later) == 2
    finally:
        await storage.aclose()
    assert await stored_keys(storage_overrides) == ["attachments/a/b"]
    expired = await client.get(url, headers=alice)
    assert expired.status_code == 404
    assert expired.json()["error"]["message"] == "The export file has expired."


async def test_the_clean_up_cron_removes_exports_past_their_results_lifetime(
    database_url: str, redis_url: str, clean_db: None, tmp_path: Path
) -> None:
    settings = job_settings(database_url, redis_url, STORAGE_DIR=str(tmp_path / "files"))
    exports = tmp_path / "files" / "exports"
    await asyncio.to_thread(exports.mkdir, parents=True)
    old, new = exports / "items-old.csv", exports / "items-new.csv"
    for path in (old, new):
        await asyncio.to_thread(path.write_text, "id\n")
    past = time.time() - settings.JOB_KEEP_RESULT - 60
    await asyncio.to_thread(os.utime, old, (past, past))
    redis = create_redis(settings)
    assert redis is not None
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        await queue.enqueue(remove_expired_exports)
        worker = await run_worker(settings, [remove_expired_exports])
    finally:
        await redis.aclose()
    assert worker.jobs_complete == 1
    assert await asyncio.to_thread(lambda: sorted(p.name for p in exports.iterdir())) == [
        "items-new.csv"
    ]


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
        settings = job_settings(database_url, redis.url, STORAGE_DIR=str(tmp_path / "files"))
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


async def test_purge_keeps_items_whose_files_cannot_be_deleted_and_purges_the_rest(
    database_url: str,
    redis_url: str,
    clean_db: None,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = job_settings(
        database_url, redis_url, S3_TIMEOUT=0.5, **s3_overrides(closed, "files")
    )
    async with running_app(settings) as (_, client):
        alice = caller(settings, "alice")
        item_id = uuid.UUID(await add(client, alice, "with a file"))
        assert (await client.delete(f"{ITEMS}/{item_id}", headers=alice)).status_code == 204
    old = utcnow() - timedelta(days=settings.SOFT_DELETE_RETENTION_DAYS + 1)
    async with db_engine.begin() as conn:
        await conn.execute(update(Item).where(col(Item.id) == item_id).values(deleted_at=old))
        await conn.execute(
            insert(ItemAttachment).values(
                id=uuid.uuid4(), item_id=item_id, filename="a.png",
                content_type="image/png", size_bytes=1,
            )
        )  # fmt: skip
    redis = create_redis(settings)
    assert redis is not None
    try:
        queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
        await queue.enqueue(purge_soft_deleted)
        with caplog.at_level(logging.INFO, "app.jobs.purge"):
            worker = await run_worker(settings, [purge_soft_deleted])
    finally:
        await redis.aclose()
    assert worker.jobs_complete == 1
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("not purging items this run") for m in messages)
    assert "purged 0 expired idempotency records" in messages  # the rest went on
    async with db_engine.connect() as conn:
        assert list((await conn.execute(select(col(Item.id)))).scalars()) == [item_id]
        assert len((await conn.execute(select(col(ItemAttachment.id)))).all()) == 1

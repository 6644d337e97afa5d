"""Enqueueing through `JobsDep`: jobs leave after the commit, never after a rollback, and
a committed job survives Redis failing before it is sent (the outbox and its relay)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from fastapi import APIRouter, FastAPI, Request
from httpx import AsyncClient
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.cache import BACKOFF_SECONDS, create_redis
from app.core.config import Settings
from app.core.db import SessionDep, on_commit
from app.core.exceptions import ConflictError
from app.jobs.enqueue import JobsDep, JobStatusDep
from app.jobs.queue import JobQueue, JobState
from app.jobs.registry import JobContext, PermanentJobError, job
from app.main import create_app
from tests.faults import redis_server
from tests.jobs.conftest import job_settings, outbox_ids, relay_now, run_worker
from tests.support import CLOSED_PORT_URL, running_app
from tests.tables import Note, count_notes

logger = logging.getLogger("tests.jobs.notes")
router = APIRouter(prefix="/test-jobs")


@job(name="test_read_note")
async def read_note(ctx: JobContext, note_id: str) -> str:
    note = await ctx.session.get(Note, uuid.UUID(note_id))
    if note is None:
        raise PermanentJobError("the note is not there")
    logger.info("job read note %s", note_id)
    return note.title


class NoteIn(BaseModel):
    title: str
    fail_after_enqueue: bool = False


@router.post("/notes", status_code=202)
async def create_note(
    body: NoteIn, request: Request, session: SessionDep, jobs: JobsDep
) -> dict[str, str]:
    """Store a note and enqueue a job reading it."""
    note = Note(title=body.title)
    session.add(note)
    await session.flush()
    fault: Callable[[], Awaitable[None]] | None
    if fault := getattr(request.app.state, "between_commit_and_send", None):
        on_commit(session, fault)  # registered first, so it runs before the job's send
    job_id = await jobs.enqueue(read_note, str(note.id), _owner="owner-1")
    hook: Callable[[], Awaitable[None]] | None = getattr(request.app.state, "after_enqueue", None)
    if hook is not None:
        await hook()
    if body.fail_after_enqueue:
        raise ConflictError("changed my mind")
    return {"job_id": job_id, "note_id": str(note.id)}


@router.get("/jobs/{job_id}")
async def read_job(job_id: str, statuses: JobStatusDep) -> dict[str, str | None]:
    """The job's state as its owner sees it."""
    info = await statuses.for_owner(job_id, "owner-1")
    return {"state": info.state if info else None}


@router.get("/ping")
async def ping() -> dict[str, str]:
    """A route that needs neither Redis nor the database."""
    return {"pong": "ok"}


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    app = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as pair:
        yield pair


async def queued_count(settings: Settings) -> int:
    redis = Redis.from_url(settings.REDIS_URL)
    try:
        return int(await redis.zcard(settings.JOBS_QUEUE_NAME))
    finally:
        await redis.aclose()


async def test_a_job_enqueued_in_a_request_runs_after_the_commit_with_its_request_id(
    settings: Settings, tables: None, db_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    async with client_for(settings) as (_, client):
        response = await client.post(
            "/test-jobs/notes", json={"title": "groceries"}, headers={"x-request-id": "req-42"}
        )
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert (await client.get(f"/test-jobs/jobs/{job_id}")).json() == {"state": "queued"}
        assert await queued_count(settings) == 1
        assert await outbox_ids(db_engine) == []  # sent after the commit: nothing left over

        with caplog.at_level(logging.INFO):
            worker = await run_worker(settings, [read_note])
        assert worker.jobs_complete == 1
        assert (await client.get(f"/test-jobs/jobs/{job_id}")).json() == {"state": "complete"}
    job_lines = [r for r in caplog.records if r.name == "tests.jobs.notes"]
    assert [r.getMessage() for r in job_lines] == [f"job read note {response.json()['note_id']}"]
    assert job_lines[0].request_id == "req-42"  # type: ignore[attr-defined]


async def test_status_and_result_are_visible_only_to_the_owner(
    settings: Settings, tables: None
) -> None:
    async with client_for(settings) as (_, client):
        response = await client.post("/test-jobs/notes", json={"title": "secret plans"})
        job_id = response.json()["job_id"]
    await run_worker(settings, [read_note])
    redis = create_redis(settings)
    assert redis is not None
    queue = JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME)
    try:
        info = await queue.info_for(job_id, "owner-1")
        assert info is not None
        assert info.state is JobState.COMPLETE
        assert info.result == "secret plans"
        assert info.attempts == 1
        assert await queue.info_for(job_id, "owner-2") is None
        assert await queue.info_for(uuid.uuid4().hex, "owner-1") is None
        assert await queue.info("../../etc/passwd") is None
    finally:
        await redis.aclose()


async def test_a_job_enqueued_in_a_rolled_back_request_never_runs(
    settings: Settings, tables: None, db_engine: AsyncEngine
) -> None:
    async with client_for(settings) as (_, client):
        response = await client.post(
            "/test-jobs/notes", json={"title": "draft", "fail_after_enqueue": True}
        )
        assert response.status_code == 409
    assert await count_notes(db_engine) == 0
    assert await queued_count(settings) == 0
    assert await outbox_ids(db_engine) == []
    assert await relay_now(settings, db_engine) == 0
    worker = await run_worker(settings, [read_note])
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 0, 0)


async def test_without_a_job_queue_configured_enqueue_is_a_503_and_the_request_rolls_back(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    settings = job_settings(database_url, "")
    async with client_for(settings) as (_, client):
        response = await client.post("/test-jobs/notes", json={"title": "lost?"})
        assert response.status_code == 503
        body = response.json()
        assert body["error"]["code"] == "service_unavailable"
        assert body["error"]["request_id"] == response.headers["x-request-id"]
        assert (await client.get("/test-jobs/ping")).status_code == 200
        assert (await client.get("/api/v1/public/health")).status_code == 200
    assert await count_notes(db_engine) == 0
    assert await outbox_ids(db_engine) == []


async def test_with_redis_down_a_job_is_accepted_and_kept_in_the_outbox(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    settings = job_settings(database_url, f"redis://{CLOSED_PORT_URL}/0")
    async with client_for(settings) as (_, client):
        response = await client.post("/test-jobs/notes", json={"title": "kept"})
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        # Its owner sees it queued while Redis is down; anyone else still sees nothing.
        assert (await client.get(f"/test-jobs/jobs/{job_id}")).json() == {"state": "queued"}
        assert (await client.get("/test-jobs/ping")).status_code == 200
    assert await count_notes(db_engine) == 1
    assert await outbox_ids(db_engine) == [job_id]


@asynccontextmanager
async def redis_proxy(target: str) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A TCP proxy to Redis that the test can cut, dropping every open connection."""
    host, port = target.split(":")
    open_writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(port))
        open_writers.extend([client_writer, server_writer])
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)

    async def cut() -> None:
        server.close()
        for writer in open_writers:
            writer.close()
        await asyncio.sleep(0.05)

    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}", cut
    finally:
        await cut()


async def test_a_send_failing_after_the_commit_is_logged_with_the_job_id(
    database_url: str,
    redis_url: str,
    clean_db: None,
    tables: None,
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = redis_url.split("//", 1)[1].split("/", 1)[0]
    async with redis_proxy(target) as (address, cut):
        settings = job_settings(database_url, f"redis://{address}/15")
        async with client_for(settings) as (app, client):
            app.state.after_enqueue = cut
            with caplog.at_level(logging.WARNING, logger="app.jobs.queue"):
                response = await client.post("/test-jobs/notes", json={"title": "kept"})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert await count_notes(db_engine) == 1
    warnings = [r for r in caplog.records if r.name == "app.jobs.queue"]
    assert len(warnings) == 1
    assert job_id in warnings[0].getMessage()
    assert "relay will send it" in warnings[0].getMessage()
    assert warnings[0].job_id == job_id  # type: ignore[attr-defined]
    assert await outbox_ids(db_engine) == [job_id]


async def test_a_job_committed_while_redis_dies_runs_once_redis_is_back(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    async with redis_server() as redis:
        settings = job_settings(database_url, redis.url)
        async with client_for(settings) as (app, client):
            app.state.between_commit_and_send = redis.kill
            response = await client.post("/test-jobs/notes", json={"title": "survivor"})
            assert response.status_code == 202
            job_id = response.json()["job_id"]
            status = f"/test-jobs/jobs/{job_id}"
            assert (await client.get(status)).json() == {"state": "queued"}

            await redis.start()  # back, and empty: only the outbox knows the job
            await asyncio.sleep(BACKOFF_SECONDS)  # the app leaves Redis alone until then
            assert (await client.get(status)).json() == {"state": "queued"}
            assert await relay_now(settings, db_engine) == 1
            assert await outbox_ids(db_engine) == []
            worker = await run_worker(settings, [read_note])
            assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
            assert (await client.get(status)).json() == {"state": "complete"}

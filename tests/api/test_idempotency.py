"""`Idempotency-Key` on a route of its own: keys live in the request's transaction, so a
failed request frees its key, a request arriving while the first runs waits for it and
replays its answer, and an expired record is replaced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from httpx import AsyncClient
from pydantic import BaseModel
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.api.idempotency import IdempotencyDep
from app.core.db import SessionDep
from app.main import create_app
from app.models.base import utcnow
from app.models.idempotency import IdempotencyRecord
from tests.support import auth_headers, make_settings, running_app
from tests.tables import Note, count_notes

router = APIRouter(prefix="/test-idempotency")
NOTES = "/test-idempotency/notes"


class NoteIn(BaseModel):
    title: str


def _refuse_commit(session: Session) -> None:
    raise RuntimeError("the database refused the commit")


@router.post("/notes", status_code=201)
async def create_note(
    body: NoteIn, request: Request, session: SessionDep, idempotency: IdempotencyDep
) -> Response:
    """Store a note; waits at `app.state.gate` (if set) once it holds its key, and its
    commit fails while `app.state.failures_left` is above zero."""
    replay = await idempotency.replay(body)
    if replay is not None:
        return replay
    note = Note(title=body.title)
    session.add(note)
    await session.flush()
    state = request.app.state
    if (gate := getattr(state, "gate", None)) is not None:
        state.holding.set()
        await gate.wait()
    if getattr(state, "failures_left", 0) > 0:
        state.failures_left -= 1
        event.listen(session.sync_session, "before_commit", _refuse_commit)
    response = JSONResponse({"id": str(note.id), "title": body.title}, status_code=201)
    await idempotency.remember(response)
    return response


@asynccontextmanager
async def client_for(database_url: str) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    settings = make_settings(database_url)  # no Redis: keys never needed it
    app = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as pair:
        yield pair


def headers_for(app: FastAPI) -> dict[str, str]:
    """A new caller with a new key."""
    headers = auth_headers(app.state.settings, f"idem-{uuid.uuid4().hex}")
    return headers | {"Idempotency-Key": uuid.uuid4().hex}


async def count_records(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = select(func.count()).select_from(IdempotencyRecord)
        return int((await conn.execute(count)).scalar_one())


async def test_a_failed_commit_leaves_the_key_free_for_the_retry(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    async with client_for(database_url) as (app, client):
        headers = headers_for(app)
        app.state.failures_left = 1
        failed = await client.post(NOTES, json={"title": "a"}, headers=headers)
        assert failed.status_code == 500
        assert await count_notes(db_engine) == await count_records(db_engine) == 0
        retried = await client.post(NOTES, json={"title": "a"}, headers=headers)
        assert retried.status_code == 201, retried.text
        assert "idempotent-replayed" not in retried.headers
        replayed = await client.post(NOTES, json={"title": "a"}, headers=headers)
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == retried.content
    assert await count_notes(db_engine) == await count_records(db_engine) == 1


@asynccontextmanager
async def second_claim_started() -> AsyncIterator[asyncio.Event]:
    """An event set when a second claim of an idempotency key reaches the database."""
    claims: list[str] = []
    started = asyncio.Event()

    def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO IDEMPOTENCY_KEYS"):
            claims.append(statement)
            if len(claims) == 2:
                started.set()

    event.listen(Engine, "before_cursor_execute", watch)
    try:
        yield started
    finally:
        event.remove(Engine, "before_cursor_execute", watch)


async def wait_until_blocked_on_a_lock(engine: AsyncEngine) -> None:
    """On PostgreSQL, wait until a session of this database waits for a lock (the second
    claim, on the first request's uncommitted key); SQLite shows no such thing."""
    if engine.dialect.name != "postgresql":
        return
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        async with engine.connect() as conn:
            if (await conn.execute(waiting)).scalar_one() > 0:
                return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("first_fails", [False, True], ids=["first-commits", "first-fails"])
async def test_a_retry_arriving_while_the_first_request_runs_waits_for_its_outcome(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine, first_fails: bool
) -> None:
    async with client_for(database_url) as (app, client):
        headers = headers_for(app)
        app.state.gate, app.state.holding = asyncio.Event(), asyncio.Event()
        app.state.failures_left = 1 if first_fails else 0

        async def post() -> httpx.Response:
            return await client.post(NOTES, json={"title": "a"}, headers=headers)

        async with asyncio.timeout(30), second_claim_started() as started:
            first = asyncio.create_task(post())
            await app.state.holding.wait()  # the first request holds the key
            second = asyncio.create_task(post())
            await started.wait()
            await wait_until_blocked_on_a_lock(db_engine)
            app.state.gate.set()
            first_response, second_response = await asyncio.gather(first, second)
    assert second_response.status_code == 201, second_response.text
    if first_fails:
        assert first_response.status_code == 500
        assert "idempotent-replayed" not in second_response.headers
    else:
        assert first_response.status_code == 201
        assert second_response.headers["idempotent-replayed"] == "true"
        assert second_response.content == first_response.content
    assert await count_notes(db_engine) == await count_records(db_engine) == 1


async def test_an_expired_record_is_replaced_by_the_next_request(
    database_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    async with client_for(database_url) as (app, client):
        headers = headers_for(app)
        first = await client.post(NOTES, json={"title": "a"}, headers=headers)
        async with db_engine.begin() as conn:
            expired = utcnow() - timedelta(hours=25)
            await conn.execute(update(IdempotencyRecord).values(created_at=expired))
        other_body = await client.post(NOTES, json={"title": "b"}, headers=headers)
        replayed = await client.post(NOTES, json={"title": "b"}, headers=headers)
    assert first.status_code == other_body.status_code == 201
    assert "idempotent-replayed" not in other_body.headers
    assert other_body.json()["id"] != first.json()["id"]
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == other_body.content
    assert await count_notes(db_engine) == 2
    assert await count_records(db_engine) == 1

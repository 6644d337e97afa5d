"""`Idempotency-Key` on a route of its own: replays, and claims released by rollbacks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from httpx import AsyncClient
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.core.db import SessionDep
from app.core.idempotency import IdempotencyDep
from app.main import create_app
from tests.support import auth_headers, make_settings, running_app
from tests.tables import Note, count_notes

router = APIRouter(prefix="/test-idempotency")
NOTES = "/test-idempotency/notes"


class NoteIn(BaseModel):
    title: str


def _refuse_commit(session: Session) -> None:
    raise RuntimeError("the database refused the commit")


# `session` is declared before `idempotency` on purpose: the claim must be released
# when the commit fails, whichever order a handler lists its dependencies in.
@router.post("/notes", status_code=201)
async def create_note(
    body: NoteIn, request: Request, session: SessionDep, idempotency: IdempotencyDep
) -> Response:
    """Store a note; the commit fails while `app.state.fail_commits` is set."""
    replay = await idempotency.replay(body)
    if replay is not None:
        return replay
    note = Note(title=body.title)
    session.add(note)
    await session.flush()
    if getattr(request.app.state, "fail_commits", False):
        event.listen(session.sync_session, "before_commit", _refuse_commit)
    response = JSONResponse({"id": str(note.id)}, status_code=201)
    idempotency.remember(session, response)
    return response


@asynccontextmanager
async def client_for(
    database_url: str, redis_url: str
) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    settings = make_settings(database_url, REDIS_URL=redis_url)
    app = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as pair:
        yield pair


async def test_a_failed_commit_releases_the_key_for_the_retry(
    database_url: str, redis_url: str, clean_db: None, tables: None, db_engine: AsyncEngine
) -> None:
    async with client_for(database_url, redis_url) as (app, client):
        settings = app.state.settings
        headers = auth_headers(settings, f"idem-{uuid.uuid4().hex}")
        headers |= {"Idempotency-Key": uuid.uuid4().hex}
        app.state.fail_commits = True
        failed = await client.post("/test-idempotency/notes", json={"title": "a"}, headers=headers)
        assert failed.status_code == 500
        assert await count_notes(db_engine) == 0
        app.state.fail_commits = False
        retried = await client.post("/test-idempotency/notes", json={"title": "a"}, headers=headers)
        assert retried.status_code == 201, retried.text
        replayed = await client.post(
            "/test-idempotency/notes", json={"title": "a"}, headers=headers
        )
    assert replayed.status_code == 201
    assert replayed.json() == retried.json()
    assert await count_notes(db_engine) == 1

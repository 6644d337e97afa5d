"""A deactivated account (`users.deleted_at` set) is refused on every authenticated
route within AUTH_DEACTIVATION_TTL, reads included, and comes back when reactivated."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import accounts
from app.core.accounts import AccountStatusCache
from app.core.config import Settings
from app.models.base import utcnow
from app.models.user import User
from tests.support import Clock, auth_headers, make_settings, running_app

ITEMS = "/api/v1/items"
TTL = 5.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(accounts, "monotonic", clock)
    return clock


@pytest.fixture
def settings(database_url: str, clean_db: None) -> Settings:
    return make_settings(database_url, AUTH_DEACTIVATION_TTL=TTL)


@pytest.fixture
async def client(settings: Settings, clock: Clock) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


async def set_deactivated(engine: AsyncEngine, subject: str, deactivated: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(User)
            .where(col(User.subject) == subject)
            .values(deleted_at=utcnow() if deactivated else None)
        )


async def test_deactivation_reaches_reads_within_the_ttl_and_reactivation_undoes_it(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine, clock: Clock
) -> None:
    subject = f"leaver-{uuid.uuid4().hex[:8]}"
    headers = auth_headers(settings, subject)
    created = await client.post(ITEMS, json={"title": "mine"}, headers=headers)
    assert created.status_code == 201
    item = f"{ITEMS}/{created.json()['id']}"
    assert (await client.get(item, headers=headers)).status_code == 200

    await set_deactivated(db_engine, subject, True)
    # Routes that load the caller's row refuse at once; reads answered from the cache
    # may still pass until its entry expires, and not one second longer.
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 403
    clock.advance(TTL + 0.1)
    for response in (
        await client.get(item, headers=headers),
        await client.get(ITEMS, headers=headers),
        await client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers=headers),
        await client.get(f"{ITEMS}/exports/{uuid.uuid4()}/download", headers=headers),
        await client.patch(item, json={"title": "x"}, headers=headers),
    ):
        assert response.status_code == 403, response.request.url
        assert response.json()["error"]["code"] == "permission_denied"
        assert response.json()["error"]["message"] == "This account has been deactivated."

    await set_deactivated(db_engine, subject, False)
    clock.advance(TTL + 0.1)
    assert (await client.get(item, headers=headers)).status_code == 200
    assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200


async def test_with_a_ttl_of_zero_deactivation_is_immediate(
    database_url: str, clean_db: None, db_engine: AsyncEngine
) -> None:
    settings = make_settings(database_url, AUTH_DEACTIVATION_TTL=0)
    subject = f"leaver-{uuid.uuid4().hex[:8]}"
    async with running_app(settings) as (_, client):
        headers = auth_headers(settings, subject)
        assert (await client.get("/api/v1/users/me", headers=headers)).status_code == 200
        assert (await client.get(ITEMS, headers=headers)).status_code == 200
        await set_deactivated(db_engine, subject, True)
        assert (await client.get(ITEMS, headers=headers)).status_code == 403


async def test_a_caller_with_no_row_yet_is_not_refused_and_gets_none_created_by_reads(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    subject = f"new-{uuid.uuid4().hex[:8]}"
    assert (await client.get(ITEMS, headers=auth_headers(settings, subject))).status_code == 200
    async with AsyncSession(db_engine) as session:
        found = await session.exec(select(User).where(col(User.subject) == subject))
        assert found.all() == []


def test_the_status_cache_forgets_after_the_ttl_and_holds_a_bounded_number() -> None:
    clock = Clock()
    cache = AccountStatusCache(TTL, max_entries=2, clock=clock)
    cache.remember("iss", "a", active=True)
    cache.remember("iss", "b", active=False)
    assert (cache.get("iss", "a"), cache.get("iss", "b"), cache.get("iss", "c")) == (
        True,
        False,
        None,
    )
    cache.remember("iss", "c", active=True)
    assert len(cache) == 2
    assert cache.get("iss", "a") is None  # the oldest went first
    assert cache.get("other-iss", "b") is None  # keyed by issuer too
    clock.advance(TTL)
    assert cache.get("iss", "b") is None
    off = AccountStatusCache(0, clock=clock)
    off.remember("iss", "a", active=False)
    assert off.get("iss", "a") is None

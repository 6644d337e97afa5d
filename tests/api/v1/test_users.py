import asyncio
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import event, func, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.config import Settings
from app.models.base import utcnow
from app.models.user import User
from tests.support import assert_unauthorized, auth_headers

ME = "/api/v1/users/me"


def new_sub() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def rows(engine: AsyncEngine, subject: str) -> list[User]:
    async with AsyncSession(engine) as session:
        result = await session.exec(select(User).where(col(User.subject) == subject))
        return list(result.all())


async def test_me_requires_a_token(client: AsyncClient) -> None:
    response = await client.get(ME)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthenticated"


async def test_first_call_creates_the_user_from_the_claims(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    sub = new_sub()
    headers = auth_headers(
        settings,
        sub,
        email="ada@example.com",
        roles=("editor", "admin"),
        tenant="t1",
        name="  Ada Lovelace ",
    )
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200
    body = response.json()
    assert body["provider"] == "local"
    assert body["subject"] == sub
    assert body["email"] == "ada@example.com"
    assert body["tenant_id"] == "t1"
    assert body["roles"] == ["admin", "editor"]
    assert body["display_name"] == "Ada Lovelace"
    assert body["created_at"]
    assert body["last_seen_at"]
    stored = await rows(db_engine, sub)
    assert [str(user.id) for user in stored] == [body["id"]]


@pytest.mark.parametrize(
    "bad", ["\x00", "\x85", "\ud800"], ids=["nul", "c1 control", "lone surrogate"]
)
async def test_unprintable_claims_never_reach_the_database(
    client: AsyncClient, settings: Settings, bad: str
) -> None:
    headers = auth_headers(
        settings,
        new_sub(),
        email=f"a{bad}@x.io",
        name=f"Ada{bad}\n Lovelace",
        roles=("editor", f"admin{bad}"),
    )
    response = await client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["email"], body["display_name"], body["roles"]) == (
        None,
        "Ada Lovelace",
        ["editor"],
    )
    bad_tenant = auth_headers(settings, new_sub(), tenant=f"t{bad}")
    assert_unauthorized(await client.get(ME, headers=bad_tenant))
    bad_subject = auth_headers(settings, f"{new_sub()}{bad}")
    assert_unauthorized(await client.get(ME, headers=bad_subject))


async def test_unchanged_claims_do_not_write_the_row(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    sub = new_sub()
    headers = auth_headers(settings, sub, email="a@example.com", tenant="t1")
    first = (await client.get(ME, headers=headers)).json()
    # Seen two minutes ago (whole seconds: SQLite keeps no more): recent enough to keep.
    recently = (utcnow() - timedelta(minutes=2)).replace(microsecond=0)
    async with db_engine.begin() as conn:
        await conn.execute(
            update(User).where(col(User.subject) == sub).values(last_seen_at=recently)
        )
    second = (await client.get(ME, headers=headers)).json()
    [stored] = await rows(db_engine, sub)
    assert stored.last_seen_at == recently  # no UPDATE from the read path
    assert (second["id"], second["email"], second["tenant_id"]) == (
        first["id"],
        "a@example.com",
        "t1",
    )


async def test_changed_claims_refresh_the_row(client: AsyncClient, settings: Settings) -> None:
    sub = new_sub()
    before = (await client.get(ME, headers=auth_headers(settings, sub, email="a@x.io"))).json()
    after_response = await client.get(
        ME, headers=auth_headers(settings, sub, email="b@x.io", tenant="t2")
    )
    after = after_response.json()
    assert after["id"] == before["id"]
    assert (after["email"], after["tenant_id"]) == ("b@x.io", "t2")
    assert after["updated_at"] >= before["updated_at"]
    # A token without an email keeps the stored one.
    kept = (await client.get(ME, headers=auth_headers(settings, sub, tenant="t2"))).json()
    assert kept["email"] == "b@x.io"


async def seen_an_hour_ago(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> tuple[str, dict[str, str], datetime]:
    """A new caller whose row was last seen an hour ago: (subject, headers, that time)."""
    sub = new_sub()
    headers = auth_headers(settings, sub)
    await client.get(ME, headers=headers)
    long_ago = utcnow() - timedelta(hours=1)
    async with db_engine.begin() as conn:
        await conn.execute(
            update(User).where(col(User.subject) == sub).values(last_seen_at=long_ago)
        )
    return sub, headers, long_ago


async def test_stale_last_seen_is_refreshed(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    sub, headers, long_ago = await seen_an_hour_ago(client, settings, db_engine)
    response = await client.get(ME, headers=headers)
    seen = (await rows(db_engine, sub))[0].last_seen_at
    assert seen is not None
    assert seen > long_ago + timedelta(minutes=50)
    assert response.status_code == 200


async def test_concurrent_requests_on_a_stale_row_write_it_once(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    if db_engine.dialect.name != "postgresql":
        pytest.skip("holds a row lock, which only PostgreSQL has")
    sub, headers, _ = await seen_an_hour_ago(client, settings, db_engine)
    updates: list[str] = []
    first_update = asyncio.Event()

    def count_updates(*args: Any) -> None:
        if args[2].lstrip().upper().startswith("UPDATE USERS"):
            updates.append(args[2])
            first_update.set()

    transport: Any = client._transport  # the lifespan's state: the app's own engine
    app_engine: AsyncEngine = transport.app.state["engine"]
    event.listen(app_engine.sync_engine, "before_cursor_execute", count_updates)
    try:
        # Every request finds the row stale while another transaction holds it.
        async with db_engine.begin() as holder:
            await holder.execute(select(User).where(col(User.subject) == sub).with_for_update())
            calls = [asyncio.create_task(client.get(ME, headers=headers)) for _ in range(8)]
            await asyncio.wait_for(first_update.wait(), timeout=10)
            await asyncio.sleep(0.3)  # time for the other requests to try writing too
        answers = await asyncio.gather(*calls)
    finally:
        event.remove(app_engine.sync_engine, "before_cursor_execute", count_updates)
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.json()["last_seen_at"] for answer in answers}) == 1
    assert len(updates) == 1


async def test_concurrent_first_requests_create_one_row(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    sub = new_sub()
    headers = auth_headers(settings, sub)
    responses = await asyncio.gather(*(client.get(ME, headers=headers) for _ in range(12)))
    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["id"] for response in responses}) == 1
    assert len(await rows(db_engine, sub)) == 1


async def test_a_deactivated_user_is_forbidden(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    sub = new_sub()
    headers = auth_headers(settings, sub)
    assert (await client.get(ME, headers=headers)).status_code == 200
    async with db_engine.begin() as conn:
        await conn.execute(
            update(User).where(col(User.subject) == sub).values(deleted_at=func.now())
        )
    response = await client.get(ME, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


async def test_patch_updates_the_display_name(client: AsyncClient, settings: Settings) -> None:
    headers = auth_headers(settings, new_sub())
    response = await client.patch(ME, headers=headers, json={"display_name": "  Grace  "})
    assert response.status_code == 200
    assert response.json()["display_name"] == "Grace"
    assert (await client.get(ME, headers=headers)).json()["display_name"] == "Grace"
    assert (await client.patch(ME, headers=headers, json={})).json()["display_name"] == "Grace"
    cleared = await client.patch(ME, headers=headers, json={"display_name": None})
    assert cleared.json()["display_name"] is None


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"display_name": "x" * 101}, ["body", "display_name"]),
        ({"display_name": "   "}, ["body", "display_name"]),
        ({"display_name": "nul\x00byte"}, ["body", "display_name"]),
        ({"display_name": "line\nbreak"}, ["body", "display_name"]),
        ({"display_name": "c1\x85control"}, ["body", "display_name"]),
        ({"display_name": 42}, ["body", "display_name"]),
        ({"email": "me@evil.example"}, ["body", "email"]),
        ({"subject": "someone-else"}, ["body", "subject"]),
        (["display_name"], ["body"]),
    ],
    ids=[
        "too long",
        "blank",
        "nul",
        "newline",
        "c1 control",
        "number",
        "email",
        "subject",
        "not an object",
    ],
)
async def test_patch_rejects_bad_input_with_a_422(
    client: AsyncClient, settings: Settings, body: Any, location: list[str]
) -> None:
    headers = auth_headers(settings, new_sub())
    response = await client.patch(ME, headers=headers, json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert location in [detail["loc"] for detail in error["details"]]


async def test_patch_requires_a_token(client: AsyncClient) -> None:
    response = await client.patch(ME, json={"display_name": "x"})
    assert response.status_code == 401


WHOLE_SECONDS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_timestamps_are_whole_seconds_in_utc_on_every_backend(
    client: AsyncClient, settings: Settings
) -> None:
    """SQLite keeps whole seconds and PostgreSQL microseconds: responses look the same."""
    headers = auth_headers(settings, new_sub())
    profile = (await client.get(ME, headers=headers)).json()
    created = await client.post("/api/v1/items", json={"title": "t"}, headers=headers)
    item = created.json()
    fetched = (await client.get(f"/api/v1/items/{item['id']}", headers=headers)).json()
    listed = (await client.get("/api/v1/items", headers=headers)).json()["items"][0]
    stamps = [profile["created_at"], profile["updated_at"], profile["last_seen_at"]]
    for body in (item, fetched, listed):
        stamps += [body["created_at"], body["updated_at"]]
    assert all(WHOLE_SECONDS_UTC.match(stamp) for stamp in stamps), stamps

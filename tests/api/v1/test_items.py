"""Items over HTTP: CRUD, tenant isolation, paging, filters, ETags, idempotency, caching."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache, create_redis
from app.core.config import Settings
from app.core.db import create_read_session_factory
from app.models.idempotency import IdempotencyRecord
from app.models.item import Item
from app.models.user import User
from app.resources import OwnerScope
from app.services import items as service
from tests.faults import redis_server
from tests.support import CLOSED_PORT_URL, auth_headers, make_settings, running_app

ITEMS = "/api/v1/items"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


def caller(settings: Settings, sub: str, tenant: str | None = None) -> dict[str, str]:
    return auth_headers(settings, sub, tenant=tenant, email=f"{sub}@example.com")


async def create(
    client: AsyncClient, headers: dict[str, str], title: str = "Thing", **fields: Any
) -> dict[str, Any]:
    response = await client.post(ITEMS, json={"title": title, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_returns_201_location_etag_and_the_item(
    client: AsyncClient, settings: Settings
) -> None:
    headers = caller(settings, "alice", "acme")
    body = {"title": "  Pump  ", "description": "main", "status": "active", "tags": ["a", "a", "b"]}
    response = await client.post(ITEMS, json=body, headers=headers)
    assert response.status_code == 201
    item = response.json()
    assert response.headers["location"] == f"{ITEMS}/{item['id']}"
    assert response.headers["etag"] == '"1"'
    assert item["title"] == "Pump"
    assert item["tags"] == ["a", "b"]
    assert item["status"] == "active"
    assert item["tenant_id"] == "acme"
    assert item["version"] == 1
    fetched = await client.get(response.headers["location"], headers=headers)
    assert fetched.json() == item


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": "x" * 201},
        {"title": "ok", "status": "lost"},
        {"title": "ok", "owner_id": str(uuid.uuid4())},
        {"title": "ok", "tags": ["bad tag with spaces"]},
        {"title": "ok", "tags": [f"t{i}" for i in range(21)]},
        {"title": "ok", "description": "d" * 5001},
        {},
        {"title": "nul\x00inside"},  # PostgreSQL cannot store NUL: a 500 before
        {"title": "bell\x07"},
        {"title": "ok", "description": "nul\x00"},
    ],
)
async def test_invalid_bodies_are_422(
    client: AsyncClient, settings: Settings, body: dict[str, Any]
) -> None:
    response = await client.post(ITEMS, json=body, headers=caller(settings, "alice"))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_null_for_a_required_field_in_a_patch_is_422(
    client: AsyncClient, settings: Settings
) -> None:
    headers = caller(settings, "alice")
    item = await create(client, headers)
    for body in (
        {"title": None},
        {"status": None},
        {"tags": None},
        {"version": 5},
        {"title": "\x00"},
    ):
        response = await client.patch(f"{ITEMS}/{item['id']}", json=body, headers=headers)
        assert response.status_code == 422, body
    cleared = await client.patch(
        f"{ITEMS}/{item['id']}", json={"description": None}, headers=headers
    )
    assert cleared.status_code == 200


async def test_items_require_authentication(client: AsyncClient) -> None:
    assert (await client.get(ITEMS)).status_code == 401
    assert (await client.post(ITEMS, json={"title": "x"})).status_code == 401


async def test_other_tenants_cannot_see_or_touch_an_item(
    client: AsyncClient, settings: Settings
) -> None:
    owner = caller(settings, "alice", "acme")
    colleague = caller(settings, "bob", "acme")
    outsider = caller(settings, "mallory", "evil")
    loner = caller(settings, "solo")
    item = await create(client, owner)
    url = f"{ITEMS}/{item['id']}"
    for headers in (outsider, loner):
        assert (await client.get(url, headers=headers)).status_code == 404
        assert (await client.patch(url, json={"title": "x"}, headers=headers)).status_code == 404
        assert (await client.delete(url, headers=headers)).status_code == 404
        assert (await client.post(f"{url}/restore", headers=headers)).status_code == 404
        listed = (await client.get(ITEMS, headers=headers)).json()
        assert listed["items"] == []
    assert (await client.get(url, headers=colleague)).status_code == 200
    listed = (await client.get(ITEMS, headers=colleague)).json()
    assert [row["id"] for row in listed["items"]] == [item["id"]]


async def test_without_a_tenant_callers_see_only_their_own_items(
    client: AsyncClient, settings: Settings
) -> None:
    mine = await create(client, caller(settings, "solo"))
    theirs = await create(client, caller(settings, "other-solo"))
    await create(client, caller(settings, "carol", "acme"))
    listed = (await client.get(ITEMS, headers=caller(settings, "solo"))).json()
    assert [row["id"] for row in listed["items"]] == [mine["id"]]
    response = await client.get(f"{ITEMS}/{theirs['id']}", headers=caller(settings, "solo"))
    assert response.status_code == 404


async def walk(
    client: AsyncClient, headers: dict[str, str], params: dict[str, Any], between: Any = None
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(ITEMS, params=query, headers=headers)).json()
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            await between()


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "title", "-title"])
async def test_paging_returns_every_row_once_while_rows_are_inserted(
    client: AsyncClient, settings: Settings, sort: str
) -> None:
    headers = caller(settings, "alice", "acme")
    originals = [await create(client, headers, f"item {i % 5}") for i in range(23)]

    async def insert_more() -> None:
        await create(client, headers, "inserted meanwhile")

    seen = await walk(client, headers, {"limit": 4, "sort": sort}, between=insert_more)
    ids = [row["id"] for row in seen]
    assert len(ids) == len(set(ids)), "a row appeared on two pages"
    assert {row["id"] for row in originals} <= set(ids)
    key = "title" if sort.endswith("title") else "created_at"
    pairs = [(row[key], row["id"]) for row in seen if row["title"] != "inserted meanwhile"]
    assert pairs == sorted(pairs, reverse=sort.startswith("-"))


async def test_list_filters_total_and_limits(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice", "acme")
    await create(client, headers, "100% cotton", status="active")
    await create(client, headers, "cotton_blend", status="archived")
    await create(client, headers, "wool", status="active")
    page = (await client.get(ITEMS, params={"q": "COTTON"}, headers=headers)).json()
    assert sorted(row["title"] for row in page["items"]) == ["100% cotton", "cotton_blend"]
    assert page["total"] is None
    page = (await client.get(ITEMS, params={"q": "%"}, headers=headers)).json()
    assert [row["title"] for row in page["items"]] == ["100% cotton"]
    page = (await client.get(ITEMS, params={"q": "_"}, headers=headers)).json()
    assert [row["title"] for row in page["items"]] == ["cotton_blend"]
    params: dict[str, str | int] = {"status": "active", "include_total": "true", "limit": 1}
    page = (await client.get(ITEMS, params=params, headers=headers)).json()
    assert page["total"] == 2
    assert len(page["items"]) == 1
    assert page["next_cursor"]


async def test_descriptions_keep_line_breaks_and_tabs(
    client: AsyncClient, settings: Settings
) -> None:
    item = await create(client, caller(settings, "alice"), description="one\ntwo\tthree\r\n")
    assert item["description"] == "one\ntwo\tthree\r\n"


async def test_paging_by_long_non_ascii_titles(client: AsyncClient, settings: Settings) -> None:
    """The cursor carries the last title: it must stay usable for the longest titles."""
    headers = caller(settings, "alice", "acme")
    titles = ["\U0001f600" * 200, "\u5b57" * 200, '"\\' * 100, "plain"]
    for title in titles:
        await create(client, headers, title)
    for sort in ("title", "-title"):
        seen = await walk(client, headers, {"limit": 1, "sort": sort})
        assert sorted(row["title"] for row in seen) == sorted(titles)


@pytest.mark.parametrize("sort", ["-created_at", "created_at"])
async def test_paging_through_rows_created_at_the_same_instant(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine, sort: str
) -> None:
    headers = caller(settings, "alice", "acme")
    ids = [(await create(client, headers, f"t{i}"))["id"] for i in range(7)]
    same = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with db_engine.begin() as conn:
        await conn.execute(update(Item).values(created_at=same))
    seen = [row["id"] for row in await walk(client, headers, {"limit": 2, "sort": sort})]
    assert seen == sorted(ids, reverse=sort.startswith("-"))


async def test_created_between_filters(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice", "acme")
    item = await create(client, headers)
    created = item["created_at"]
    before = {"created_before": created}
    after = {"created_after": "2000-01-01T00:00:00Z", "created_before": "2999-01-01T00:00:00Z"}
    assert (await client.get(ITEMS, params=before, headers=headers)).json()["items"] == []
    assert len((await client.get(ITEMS, params=after, headers=headers)).json()["items"]) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"status": "lost"},
        {"sort": "owner_id"},
        {"created_after": "yesterday"},
        {"created_after": "2024-01-01T00:00:00"},  # no time zone
        {"cursor": "not-a-cursor"},
        {"cursor": "c" * 2049},
        {"unknown": "1"},
        {"q": "nul\x00"},  # a 500 on PostgreSQL before
        {"created_after": "0001-01-01T00:00:00+01:00"},  # before year 1 in UTC: a 500 before
        {"created_before": "9999-12-31T23:59:59-01:00"},  # after year 9999 in UTC
    ],
)
async def test_bad_list_parameters_are_422(
    client: AsyncClient, settings: Settings, params: dict[str, Any]
) -> None:
    response = await client.get(ITEMS, params=params, headers=caller(settings, "alice"))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_cursors_cannot_be_altered_or_reused_with_another_sort(
    client: AsyncClient, settings: Settings
) -> None:
    headers = caller(settings, "alice", "acme")
    for i in range(3):
        await create(client, headers, f"t{i}")
    page = (await client.get(ITEMS, params={"limit": 1}, headers=headers)).json()
    cursor = page["next_cursor"]
    tampered = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    for params in ({"cursor": tampered}, {"cursor": cursor, "sort": "title"}):
        response = await client.get(ITEMS, params={"limit": 1, **params}, headers=headers)
        assert response.status_code == 422


async def test_etags_and_if_match(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice", "acme")
    item = await create(client, headers)
    url = f"{ITEMS}/{item['id']}"
    assert (await client.get(url, headers=headers)).headers["etag"] == '"1"'
    changes = {"title": "v2", "tags": ["x", "y"], "status": "archived"}
    updated = await client.patch(url, json=changes, headers=headers | {"If-Match": '"1"'})
    assert updated.status_code == 200
    assert updated.headers["etag"] == '"2"'
    assert {k: updated.json()[k] for k in changes} == changes
    assert (await client.get(url, headers=headers)).json() == updated.json()
    stale = await client.patch(url, json={"title": "v3"}, headers=headers | {"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "precondition_failed"
    weak = await client.patch(url, json={"title": "v3"}, headers=headers | {"If-Match": 'W/"2"'})
    assert weak.status_code == 412
    blind = await client.patch(url, json={"title": "v3"}, headers=headers)
    assert blind.status_code == 200
    assert blind.json()["version"] == 3
    empty = await client.patch(url, json={}, headers=headers | {"If-Match": '"3"'})
    assert empty.status_code == 200
    assert empty.json()["version"] == 3
    several = headers | {"If-Match": '"1", "3"'}  # any one of them may be current
    patched = await client.patch(
        url, json={"tags": ["b", "a"], "status": "active"}, headers=several
    )
    assert patched.status_code == 200
    assert patched.json()["version"] == 4
    assert patched.json()["tags"] == ["b", "a"]
    assert patched.json()["status"] == "active"
    assert (await client.patch(url, json={"title": "v5"}, headers=several)).status_code == 412
    assert (await client.delete(url, headers=headers | {"If-Match": '"2"'})).status_code == 412
    assert (await client.delete(url, headers=headers | {"If-Match": '"4"'})).status_code == 204
    assert (await client.get(url, headers=headers)).status_code == 404


@pytest.mark.parametrize("version", ["2147483648", "999999999999999999", "0"])
async def test_an_if_match_version_the_item_can_never_have_is_412(
    client: AsyncClient, settings: Settings, version: str
) -> None:
    headers = caller(settings, "alice", "acme")
    url = f"{ITEMS}/{(await create(client, headers))['id']}"
    impossible = headers | {"If-Match": f'"{version}"'}
    patched = await client.patch(url, json={"title": "v2"}, headers=impossible)
    assert patched.status_code == 412, patched.text
    assert patched.json()["error"]["code"] == "precondition_failed"
    assert (await client.delete(url, headers=impossible)).status_code == 412
    either = headers | {"If-Match": f'"{version}", "1"'}
    updated = await client.patch(url, json={"title": "v2"}, headers=either)
    assert updated.status_code == 200
    assert updated.headers["etag"] == '"2"'


async def test_soft_delete_and_restore(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice", "acme")
    item = await create(client, headers)
    url = f"{ITEMS}/{item['id']}"
    assert (await client.delete(url, headers=headers)).status_code == 204
    assert (await client.delete(url, headers=headers)).status_code == 404
    assert (await client.get(ITEMS, headers=headers)).json()["items"] == []
    restored = await client.post(f"{url}/restore", headers=headers)
    assert restored.status_code == 200
    assert restored.json()["title"] == item["title"]
    again = await client.post(f"{url}/restore", headers=headers)
    assert again.status_code == 200
    assert again.json()["version"] == restored.json()["version"]
    assert (await client.get(url, headers=headers)).status_code == 200


async def test_unknown_ids_are_404_and_malformed_ids_422(
    client: AsyncClient, settings: Settings
) -> None:
    headers = caller(settings, "alice")
    assert (await client.get(f"{ITEMS}/{uuid.uuid4()}", headers=headers)).status_code == 404
    assert (await client.get(f"{ITEMS}/not-a-uuid", headers=headers)).status_code == 422


async def count_rows(engine: AsyncEngine, model: Any, *where: Any) -> int:
    async with engine.connect() as conn:
        count = select(func.count()).select_from(model).where(*where)
        return int((await conn.execute(count)).scalar_one())


async def test_idempotency_key_replays_the_first_response(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    key = uuid.uuid4().hex
    headers = caller(settings, f"idem-{key}", "acme") | {"Idempotency-Key": key}
    body = {"title": "Ünïcode ✓ once", "tags": ["ça", "b"]}
    first = await client.post(ITEMS, json=body, headers=headers)
    replay = await client.post(ITEMS, json=body, headers=headers)
    assert first.status_code == replay.status_code == 201
    assert replay.content == first.content
    for header in ("location", "etag", "content-type"):
        assert replay.headers[header] == first.headers[header]
    assert replay.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    listed = await client.get(ITEMS, params={"include_total": "true"}, headers=headers)
    assert listed.json()["total"] == 1
    mismatch = await client.post(ITEMS, json={"title": "Other"}, headers=headers)
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["code"] == "validation_error"
    other_caller = caller(settings, f"idem2-{key}", "acme") | {"Idempotency-Key": key}
    separate = await client.post(ITEMS, json=body, headers=other_caller)
    assert separate.status_code == 201
    assert separate.json()["id"] != first.json()["id"]
    assert await count_rows(db_engine, IdempotencyRecord) == 2
    bad = await client.post(ITEMS, json=body, headers=headers | {"Idempotency-Key": ""})
    assert bad.status_code == 422


async def test_an_idempotency_key_is_not_replayed_into_another_tenant(
    client: AsyncClient, settings: Settings
) -> None:
    key = uuid.uuid4().hex
    sub = f"idem-{key}"
    in_acme = caller(settings, sub, "acme") | {"Idempotency-Key": key}
    in_other = caller(settings, sub, f"other-{key}") | {"Idempotency-Key": key}
    first = await client.post(ITEMS, json={"title": "Same"}, headers=in_acme)
    second = await client.post(ITEMS, json={"title": "Same"}, headers=in_other)
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert second.json()["tenant_id"] == f"other-{key}"
    assert second.json()["id"] != first.json()["id"]


@contextlib.asynccontextmanager
async def redis_that_is(state: str) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]]]]:
    """A `REDIS_URL`, and what happens to that Redis between two requests."""
    if state == "restarted-empty":
        async with redis_server() as server:
            yield server.url, server.restart
        return

    async def nothing() -> None:
        return None

    yield ("" if state == "absent" else f"redis://{CLOSED_PORT_URL}/0"), nothing


@pytest.mark.parametrize("state", ["absent", "refusing", "restarted-empty"])
async def test_a_retry_is_replayed_whatever_happened_to_redis(
    database_url: str, clean_db: None, db_engine: AsyncEngine, state: str
) -> None:
    """Keys are kept in the database: without Redis, with Redis refusing connections (the
    cache backing off), or restarted empty between the two requests, a retry creates
    nothing and gets the first response."""
    async with redis_that_is(state) as (redis_url, between_requests):
        settings = make_settings(database_url, REDIS_URL=redis_url)
        async with running_app(settings) as (_, client):
            key = uuid.uuid4().hex
            headers = caller(settings, f"idem-{key}", f"t-{key}") | {"Idempotency-Key": key}
            first = await client.post(ITEMS, json={"title": "Once"}, headers=headers)
            await between_requests()
            second = await client.post(ITEMS, json={"title": "Once"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert await count_rows(db_engine, Item, col(Item.tenant_id) == f"t-{key}") == 1
    assert await count_rows(db_engine, IdempotencyRecord) == 1


async def test_concurrent_requests_with_one_key_create_one_item(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    key = uuid.uuid4().hex
    tenant = f"t-{key}"
    headers = caller(settings, f"idem-{key}", tenant) | {"Idempotency-Key": key}
    async with asyncio.timeout(30):
        responses = await asyncio.gather(
            *(client.post(ITEMS, json={"title": "Once"}, headers=headers) for _ in range(4))
        )
    assert [r.status_code for r in responses] == [201] * 4
    assert {r.content for r in responses} == {responses[0].content}
    replayed = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert len(replayed) == 3
    assert await count_rows(db_engine, Item, col(Item.tenant_id) == tenant) == 1
    assert await count_rows(db_engine, IdempotencyRecord) == 1


async def test_a_failed_request_does_not_burn_its_idempotency_key(
    client: AsyncClient, settings: Settings
) -> None:
    key = uuid.uuid4().hex
    headers = caller(settings, f"idem-{key}", "acme") | {"Idempotency-Key": key}
    rejected = await client.post(ITEMS, json={"title": ""}, headers=headers)
    assert rejected.status_code == 422
    created = await client.post(ITEMS, json={"title": "Fine"}, headers=headers)
    assert created.status_code == 201
    assert "idempotent-replayed" not in created.headers


@pytest.fixture
async def redis_client(
    database_url: str, redis_url: str, clean_db: None
) -> AsyncIterator[tuple[Settings, AsyncClient]]:
    settings = make_settings(database_url, REDIS_URL=redis_url)
    async with running_app(settings) as (_, client):
        yield settings, client


async def test_single_item_reads_are_cached_and_invalidated_by_writes(
    redis_client: tuple[Settings, AsyncClient], db_engine: AsyncEngine
) -> None:
    settings, client = redis_client
    headers = caller(settings, f"cache-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}")
    item = await create(client, headers, "Original")
    url = f"{ITEMS}/{item['id']}"
    assert (await client.get(url, headers=headers)).json()["title"] == "Original"
    async with db_engine.begin() as conn:  # a change behind the API's back
        await conn.execute(
            update(Item).where(col(Item.id) == uuid.UUID(item["id"])).values(title="Changed in DB")
        )
    assert (await client.get(url, headers=headers)).json()["title"] == "Original"  # cache hit
    await client.patch(url, json={"description": "touch"}, headers=headers)
    assert (await client.get(url, headers=headers)).json()["title"] == "Changed in DB"
    await client.delete(url, headers=headers)
    assert (await client.get(url, headers=headers)).status_code == 404


class WriteDuringRead:
    """A read session whose query returns what it read only after `write` committed:
    the interleaving of a cache miss racing a write."""

    sync_connection = None  # no driver connection: every statement goes through `execute`

    def __init__(self, session: AsyncSession, write: Callable[[], Awaitable[None]]) -> None:
        self.session = session
        self.write = write
        self.dialect = session.sync_session.get_bind().dialect

    async def connection(self) -> WriteDuringRead:
        return self

    async def execute(self, statement: Any, params: Any = None) -> Any:
        result = await (await self.session.connection()).execute(statement, params)
        await self.write()
        return result


@pytest.mark.parametrize(
    ("change", "after"),
    [("patch", {"status_code": 200, "title": "After"}), ("delete", {"status_code": 404})],
)
async def test_a_read_racing_a_write_cannot_cache_the_old_item(
    redis_client: tuple[Settings, AsyncClient],
    db_engine: AsyncEngine,
    change: str,
    after: dict[str, Any],
) -> None:
    settings, client = redis_client
    sub, tenant = f"race-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    headers = caller(settings, sub, tenant)
    item = await create(client, headers, "Before")
    url = f"{ITEMS}/{item['id']}"

    async def write() -> None:
        if change == "patch":
            response = await client.patch(url, json={"title": "After"}, headers=headers)
        else:
            response = await client.delete(url, headers=headers)
        assert response.status_code in {200, 204}

    redis = create_redis(settings)
    scope = OwnerScope(tenant, settings.AUTH_PROVIDER.value, sub)
    try:
        async with create_read_session_factory(db_engine)() as session:
            racing = WriteDuringRead(session, write)
            seen = await service.read_item(racing, Cache(redis), scope, uuid.UUID(item["id"]))  # type: ignore[arg-type]
    finally:
        assert redis is not None
        await redis.aclose()
    assert seen.title == "Before"  # what the losing read saw, and tried to cache
    response = await client.get(url, headers=headers)
    assert response.status_code == after["status_code"]
    if "title" in after:
        assert response.json()["title"] == after["title"]


async def test_a_cache_entry_this_release_cannot_read_is_a_miss(
    redis_client: tuple[Settings, AsyncClient],
) -> None:
    settings, client = redis_client
    sub, tenant = f"cache-{uuid.uuid4().hex}", f"t-{uuid.uuid4().hex}"
    headers = caller(settings, sub, tenant)
    item = await create(client, headers, "Current")
    scope = OwnerScope(tenant, settings.AUTH_PROVIDER.value, sub)
    redis = create_redis(settings)
    try:  # as an older release with another item shape would have left it
        await Cache(redis).set_json(
            service.items.cache.key(scope, uuid.UUID(item["id"])), {"name": "x"}, 60
        )
        response = await client.get(f"{ITEMS}/{item['id']}", headers=headers)
    finally:
        assert redis is not None
        await redis.aclose()
    assert response.status_code == 200
    assert response.json()["title"] == "Current"


async def test_a_redis_outage_only_costs_speed(database_url: str, clean_db: None) -> None:
    settings = make_settings(database_url, REDIS_URL=f"redis://{CLOSED_PORT_URL}/0")
    async with running_app(settings) as (_, client):
        headers = caller(settings, "alice", "acme") | {"Idempotency-Key": "during-outage"}
        item = await create(client, headers)
        response = await client.get(f"{ITEMS}/{item['id']}", headers=headers)
        assert response.status_code == 200
        assert response.json()["id"] == item["id"]


async def test_item_writes_are_rate_limited(
    database_url: str, redis_url: str, clean_db: None
) -> None:
    settings = make_settings(database_url, REDIS_URL=redis_url, RATE_LIMIT_ITEM_WRITES="2/minute")
    async with running_app(settings) as (_, client):
        headers = caller(settings, f"rl-{uuid.uuid4().hex}", "acme")
        first = await client.post(ITEMS, json={"title": "1"}, headers=headers)
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-remaining"] == "1"
        await client.post(ITEMS, json={"title": "2"}, headers=headers)
        third = await client.post(ITEMS, json={"title": "3"}, headers=headers)
        assert third.status_code == 429
        assert int(third.headers["retry-after"]) >= 1
        assert third.json()["error"]["code"] == "rate_limited"
        assert (await client.get(ITEMS, headers=headers)).status_code == 200


async def test_a_deactivated_account_cannot_change_items(
    client: AsyncClient, settings: Settings, db_engine: AsyncEngine
) -> None:
    headers = caller(settings, "leaver", "acme")
    item = await create(client, headers)
    url = f"{ITEMS}/{item['id']}"
    async with db_engine.begin() as conn:
        await conn.execute(
            update(User).where(col(User.subject) == "leaver").values(deleted_at=datetime.now(UTC))
        )
    assert (await client.patch(url, json={"title": "x"}, headers=headers)).status_code == 403
    assert (await client.delete(url, headers=headers)).status_code == 403
    assert (await client.post(f"{url}/restore", headers=headers)).status_code == 403
    assert (await client.post(ITEMS, json={"title": "x"}, headers=headers)).status_code == 403
    assert (await client.post(f"{ITEMS}/exports", json={}, headers=headers)).status_code == 403
    colleague = caller(settings, "stayer", "acme")
    assert (await client.get(url, headers=colleague)).json()["title"] == item["title"]

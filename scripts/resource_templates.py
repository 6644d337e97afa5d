"""The files `make resource` writes (scripts/resource.py), as `string.Template`s.

Placeholders: `$names` (orders), `$one` (order), `$Model` (Order), `$path` (orders in
URLs, order-lines for order_lines), `$label`/`$labels` (words for docstrings). `$$` is
a literal dollar sign.
"""

from __future__ import annotations

from string import Template

MODEL = Template('''
"""The `$names` table: $labels, a tenant-scoped, soft-deleted, versioned resource."""

from __future__ import annotations

from typing import ClassVar

from sqlmodel import Field

from app.models.base import ScopedTable, purgeable, scope_indexes


@purgeable
class $Model(ScopedTable, table=True):
    """A $label kept by a tenant (or, without a tenant, by one user)."""

    __tablename__: ClassVar[str] = "$names"
    # One index per sort the list offers (`Sorts` in app/services/$names.py), scope first.
    __table_args__ = scope_indexes("$names", "created_at", "name")

    name: str = Field(max_length=200)
    notes: str | None = Field(default=None, max_length=2000)
''')

SCHEMAS = Template('''
"""$Model request and response bodies."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from app.schemas.common import PageParams, PartialUpdate, Timestamp

# PostgreSQL cannot store NUL in text; a name has no use for other control characters.
Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\\x00-\\x1f\\x7f]*$$"
    ),
]
Notes = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\\x00]*$$")]


class ${Model}Create(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    notes: Notes | None = None


class ${Model}Update(PartialUpdate):
    """Only the fields sent change; `notes: null` clears the notes."""

    not_null = ("name",)

    name: Name | SkipJsonSchema[None] = None
    notes: Notes | None = None


class ${Model}Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: str | None
    owner_id: uuid.UUID
    name: str
    notes: str | None
    version: int
    created_at: Timestamp
    updated_at: Timestamp


class ${Model}ListParams(PageParams):
    """Query parameters of `GET /$path`."""

    sort: Literal["created_at", "-created_at", "name", "-name"] = "-created_at"
''')

SERVICE = Template('''
"""$Model rules, on the resource kit (app/resources): the store keeps every query to
the caller's scope, caches single rows and checks `If-Match` in the UPDATE itself."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from app.core.cache import Cache
from app.core.pagination import CursorCodec
from app.models.$one import $Model
from app.models.user import User
from app.resources import OwnerScope, PageResult, ScopedStore, Sorts
from app.resources.store import Database
from app.schemas.$one import ${Model}Create, ${Model}ListParams, ${Model}Read

$names = ScopedStore(
    $Model, ${Model}Read, sorts=Sorts(created_at=$Model.created_at, name=$Model.name)
)


async def create_$one(
    session: AsyncSession, owner: User, tenant_id: str | None, data: ${Model}Create
) -> ${Model}Read:
    return await $names.create(session, owner.id, tenant_id, **data.model_dump())


async def read_$one(
    db: Database, cache: Cache, scope: OwnerScope, ${one}_id: uuid.UUID
) -> ${Model}Read:
    return await $names.read(db, cache, scope, ${one}_id)


async def list_$names(
    db: Database, scope: OwnerScope, params: ${Model}ListParams, codec: CursorCodec
) -> PageResult[${Model}Read]:
    return await $names.page(db, scope, params, codec=codec)


async def update_$one(
    session: AsyncSession,
    cache: Cache,
    scope: OwnerScope,
    ${one}_id: uuid.UUID,
    changes: dict[str, Any],
    expected_versions: Collection[int] | None = None,
) -> ${Model}Read:
    return await $names.update(session, cache, scope, ${one}_id, changes, expected_versions)


async def delete_$one(
    session: AsyncSession,
    cache: Cache,
    scope: OwnerScope,
    ${one}_id: uuid.UUID,
    expected_versions: Collection[int] | None = None,
) -> None:
    await $names.delete(session, cache, scope, ${one}_id, expected_versions)
''')

ROUTER = Template('''
"""$Model endpoints: tenant-scoped CRUD with paging, ETags and idempotent create."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.api.deps import (
    ActiveAccount,
    CacheDep,
    CurrentPrincipal,
    CurrentUser,
    CursorCodecDep,
    ReadConnectionDep,
    SessionDep,
)
from app.api.idempotency import IdempotencyDep
from app.api.openapi import ETAG, LOCATION, REPLAYED, errors, success
from app.api.preconditions import IfMatch
from app.api.responses import ModelResponse, Replayed, tagged
from app.core.ratelimit import rate_limit
from app.core.route_templates import path_for
from app.resources import ScopeDep
from app.schemas.common import Page
from app.schemas.$one import ${Model}Create, ${Model}ListParams, ${Model}Read, ${Model}Update
from app.services import $names as service

router = APIRouter(prefix="/$path", tags=["$path"], dependencies=[ActiveAccount])
limit_writes = rate_limit(scope="$names:write")  # RATE_LIMIT_DEFAULT


@router.post(
    "",
    status_code=201,
    response_model=${Model}Read,
    responses=success(201, "The created $label.", **LOCATION, **ETAG, **REPLAYED),
    dependencies=[limit_writes],
)
async def create_$one(
    body: ${Model}Create,
    request: Request,
    user: CurrentUser,
    principal: CurrentPrincipal,
    session: SessionDep,
    idempotency: IdempotencyDep,
) -> ModelResponse[${Model}Read] | Replayed:
    """Create a $label. A retry with the same `Idempotency-Key` returns the first response."""
    replay = await idempotency.replay(body)
    if replay is not None:
        return replay
    created = await service.create_$one(session, user, principal.tenant_id, body)
    location = path_for(request, "read_$one", ${one}_id=str(created.id))
    response = tagged(created, 201, Location=location)
    await idempotency.remember(response)
    return response


@router.get("", response_model=Page[${Model}Read])
async def list_$names(
    params: Annotated[${Model}ListParams, Query()],
    scope: ScopeDep,
    db: ReadConnectionDep,
    codec: CursorCodecDep,
) -> ModelResponse[Page[${Model}Read]]:
    """List $labels, newest first by default, with cursor paging."""
    page = await service.list_$names(db, scope, params, codec)
    rows = Page[${Model}Read](items=page.items, next_cursor=page.next_cursor, total=page.total)
    return ModelResponse(rows)


@router.get(
    "/{${one}_id}",
    response_model=${Model}Read,
    responses=success(200, "The $label.", **ETAG) | errors(404),
)
async def read_$one(
    ${one}_id: uuid.UUID, scope: ScopeDep, db: ReadConnectionDep, cache: CacheDep
) -> ModelResponse[${Model}Read]:
    """One $label, with its `ETag`."""
    return tagged(await service.read_$one(db, cache, scope, ${one}_id))


@router.patch(
    "/{${one}_id}",
    response_model=${Model}Read,
    responses=success(200, "The $label as changed.", **ETAG) | errors(404),
    dependencies=[limit_writes],
)
async def update_$one(
    ${one}_id: uuid.UUID,
    body: ${Model}Update,
    if_match: IfMatch,
    scope: ScopeDep,
    session: SessionDep,
    cache: CacheDep,
) -> ModelResponse[${Model}Read]:
    """Change the fields sent; with `If-Match`, only if the $label is still at that version."""
    changes = body.changes()
    updated = await service.update_$one(session, cache, scope, ${one}_id, changes, if_match)
    return tagged(updated)


@router.delete(
    "/{${one}_id}", status_code=204, responses=errors(404), dependencies=[limit_writes]
)
async def delete_$one(
    ${one}_id: uuid.UUID, if_match: IfMatch, scope: ScopeDep, session: SessionDep, cache: CacheDep
) -> Response:
    """Soft-delete a $label (the retention purge removes it for good later)."""
    await service.delete_$one(session, cache, scope, ${one}_id, if_match)
    return Response(status_code=204)
''')

TESTS = Template('''
"""$Model endpoints over HTTP: CRUD, validation, paging and tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from app.core.config import Settings
from tests.support import auth_headers

URL = "/api/v1/$path"


def caller(settings: Settings, sub: str, tenant: str | None = "acme") -> dict[str, str]:
    return auth_headers(settings, sub, tenant=tenant)


async def create(client: AsyncClient, headers: dict[str, str], name: str) -> dict[str, Any]:
    response = await client.post(URL, json={"name": name}, headers=headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_read_update_and_delete(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice")
    created = await client.post(URL, json={"name": "  First  ", "notes": "n"}, headers=headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["notes"], body["version"]) == ("First", "n", 1)
    assert created.headers["location"] == f"{URL}/{body['id']}"
    assert created.headers["etag"] == '"1"'
    fetched = await client.get(created.headers["location"], headers=headers)
    assert fetched.json() == body
    assert fetched.headers["etag"] == '"1"'

    url = created.headers["location"]
    changed = await client.patch(
        url, json={"name": "Second", "notes": None}, headers=headers | {"If-Match": '"1"'}
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["name"], changed.json()["notes"]) == ("Second", None)
    assert changed.headers["etag"] == '"2"'
    stale = await client.patch(url, json={"name": "x"}, headers=headers | {"If-Match": '"1"'})
    assert stale.status_code == 412
    assert (await client.get(url, headers=headers)).json()["name"] == "Second"

    assert (await client.delete(url, headers=headers)).status_code == 204
    assert (await client.get(url, headers=headers)).status_code == 404
    assert (await client.delete(url, headers=headers)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "x" * 201},
        {"name": "bad\\x00name"},
        {"name": "ok", "notes": "n" * 2001},
        {"name": "ok", "version": 7},
        {"name": "ok", "owner_id": "00000000-0000-0000-0000-000000000000"},
    ],
)
async def test_invalid_bodies_are_422(
    client: AsyncClient, settings: Settings, body: dict[str, Any]
) -> None:
    response = await client.post(URL, json=body, headers=caller(settings, "alice"))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_a_name_cannot_be_set_to_null(client: AsyncClient, settings: Settings) -> None:
    headers = caller(settings, "alice")
    row = await create(client, headers, "Kept")
    response = await client.patch(f"{URL}/{row['id']}", json={"name": None}, headers=headers)
    assert response.status_code == 422
    assert (await client.get(f"{URL}/{row['id']}", headers=headers)).json()["name"] == "Kept"


async def test_paging_returns_every_row_once_in_order(
    client: AsyncClient, settings: Settings
) -> None:
    headers = caller(settings, "alice")
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    for name in names:
        await create(client, headers, name)
    seen: list[str] = []
    query: dict[str, Any] = {"limit": 2, "sort": "name", "include_total": "true"}
    while True:
        page = (await client.get(URL, params=query, headers=headers)).json()
        assert page["total"] == len(names)
        seen += [row["name"] for row in page["items"]]
        if page["next_cursor"] is None:
            break
        query["cursor"] = page["next_cursor"]
    assert seen == sorted(names)
    tampered = await client.get(URL, params={"cursor": "AAAA"}, headers=headers)
    assert tampered.status_code == 422
    unknown_sort = await client.get(URL, params={"sort": "owner_id"}, headers=headers)
    assert unknown_sort.status_code == 422


async def test_another_tenant_gets_404(client: AsyncClient, settings: Settings) -> None:
    row = await create(client, caller(settings, "alice", "acme"), "Private")
    url = f"{URL}/{row['id']}"
    outsider = caller(settings, "mallory", "globex")
    assert (await client.get(url, headers=outsider)).status_code == 404
    assert (await client.patch(url, json={"name": "x"}, headers=outsider)).status_code == 404
    assert (await client.delete(url, headers=outsider)).status_code == 404
    assert (await client.get(URL, headers=outsider)).json()["items"] == []
    colleague = caller(settings, "bob", "acme")
    assert (await client.get(url, headers=colleague)).json()["name"] == "Private"


async def test_without_a_tenant_rows_are_their_owners_alone(
    client: AsyncClient, settings: Settings
) -> None:
    row = await create(client, caller(settings, "alice", None), "Mine")
    other = caller(settings, "bob", None)
    assert (await client.get(f"{URL}/{row['id']}", headers=other)).status_code == 404
    assert (await client.get(URL, headers=other)).json()["items"] == []
''')

TEMPLATES = {
    "model": MODEL,
    "schemas": SCHEMAS,
    "service": SERVICE,
    "router": ROUTER,
    "tests": TESTS,
}

"""Item attachments over HTTP, on both storage backends: upload, download, limits,
content checks, hostile names, tenant scope, storage outages and the purge."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col
from starlette.types import Message, Scope

from app.core.config import Settings
from app.core.db import create_session_factory
from app.integrations.storage import create_storage
from app.main import create_app
from app.models.attachment import ItemAttachment
from app.models.base import utcnow
from app.models.item import Item
from app.services import attachments as service
from app.services.attachments import purge_attachments
from tests.s3 import fetch_download, s3_overrides, stored_keys
from tests.support import (
    WithLifespanState,
    auth_headers,
    free_port,
    make_settings,
    running_app,
)

ITEMS = "/api/v1/items"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(200))
PDF = b"%PDF-1.7\n" + b"x" * 100


@pytest.fixture
def settings(database_url: str, clean_db: None, storage_overrides: dict[str, Any]) -> Settings:
    return make_settings(database_url, UPLOAD_MAX_BYTES=4096, **storage_overrides)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


def caller(settings: Settings, sub: str, tenant: str = "acme") -> dict[str, str]:
    return auth_headers(settings, sub, tenant=tenant)


async def new_item(client: AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post(ITEMS, json={"title": "with files"}, headers=headers)
    assert response.status_code == 201, response.text
    item_id: str = response.json()["id"]
    return item_id


async def upload(
    client: AsyncClient,
    headers: dict[str, str],
    item_id: str,
    content: bytes | AsyncIterator[bytes],
    *,
    filename: str = "photo.png",
    content_type: str = "image/png",
) -> httpx.Response:
    return await client.post(
        f"{ITEMS}/{item_id}/attachments",
        params={"filename": filename},
        content=content,
        headers={**headers, "Content-Type": content_type},
    )


async def test_an_uploaded_file_is_listed_downloaded_and_deleted(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    response = await upload(client, alice, item_id, PNG, filename="Holiday é.png")
    assert response.status_code == 201, response.text
    attachment = response.json()
    assert attachment["filename"] == "Holiday é.png"
    assert attachment["content_type"] == "image/png"
    assert attachment["size_bytes"] == len(PNG)
    assert attachment["item_id"] == item_id
    location = response.headers["location"]
    assert location == f"{ITEMS}/{item_id}/attachments/{attachment['id']}"
    key = f"attachments/{uuid.UUID(item_id).hex}/{uuid.UUID(attachment['id']).hex}"
    assert await stored_keys(storage_overrides) == [key]

    listed = await client.get(f"{ITEMS}/{item_id}/attachments", headers=alice)
    assert listed.status_code == 200
    assert listed.json() == [attachment]

    file = await fetch_download(client, location, alice)
    assert file.status_code == 200
    assert file.content == PNG
    assert file.headers["content-type"] == "image/png"
    assert "filename*=UTF-8''Holiday%20%C3%A9.png" in file.headers["content-disposition"]
    assert file.headers["content-disposition"].startswith("attachment;")

    # Anyone in the tenant reaches it; it is the item's, not the uploader's.
    colleague = caller(settings, "bob")
    assert (await fetch_download(client, location, colleague)).content == PNG

    deleted = await client.delete(location, headers=colleague)
    assert deleted.status_code == 204
    assert await stored_keys(storage_overrides) == []
    assert (await client.get(location, headers=alice)).status_code == 404
    assert (await client.delete(location, headers=alice)).status_code == 404


async def test_another_tenant_cannot_reach_the_item_or_its_files(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    mallory = caller(settings, "mallory", tenant="evil")
    item_id = await new_item(client, alice)
    location = (await upload(client, alice, item_id, PNG)).headers["location"]
    attempts = [
        await client.get(location, headers=mallory),
        await client.delete(location, headers=mallory),
        await client.get(f"{ITEMS}/{item_id}/attachments", headers=mallory),
        await upload(client, mallory, item_id, PNG),
    ]
    for response in attempts:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert len(await stored_keys(storage_overrides)) == 1
    assert (await fetch_download(client, location, alice)).content == PNG


async def test_a_hostile_filename_is_only_a_label(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    hostile = '../../etc/passwd\r\nSet-Cookie: x=1\x00"quoted".png'
    response = await upload(client, alice, item_id, PNG, filename=hostile)
    assert response.status_code == 201, response.text
    name = response.json()["filename"]
    assert name == 'passwdSet-Cookie: x=1"quoted".png'
    (key,) = await stored_keys(storage_overrides)
    assert re.fullmatch(r"attachments/[0-9a-f]{32}/[0-9a-f]{32}", key)
    file = await fetch_download(client, response.headers["location"], alice)
    assert file.status_code == 200
    disposition = file.headers["content-disposition"]
    assert "\r" not in disposition
    assert "\n" not in disposition
    assert 'filename="passwdSet-Cookie: x=1_quoted_.png"' in disposition
    assert "set-cookie" not in file.headers
    dots = await upload(client, alice, item_id, PNG, filename="../..")
    assert dots.json()["filename"] == "file"


async def test_a_file_over_the_limit_is_413_and_nothing_is_stored(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    too_big = PNG + b"\x00" * (4 * settings.UPLOAD_MAX_BYTES)

    declared = await upload(client, alice, item_id, too_big)  # Content-Length says so
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    sent: list[int] = []

    async def streamed() -> AsyncIterator[bytes]:  # chunked: no length to go by
        for start in range(0, len(too_big), 1000):
            sent.append(start)
            yield too_big[start : start + 1000]

    chunked = await upload(client, alice, item_id, streamed())
    assert chunked.status_code == 413
    # Refused as it crossed the limit, not after reading the rest.
    assert len(sent) <= settings.UPLOAD_MAX_BYTES // 1000 + 2 < len(too_big) // 1000
    assert chunked.json()["error"]["code"] == "payload_too_large"
    assert chunked.json()["error"]["request_id"]
    assert await stored_keys(storage_overrides) == []
    listed = await client.get(f"{ITEMS}/{item_id}/attachments", headers=alice)
    assert listed.json() == []

    exactly = PNG + b"\x00" * (settings.UPLOAD_MAX_BYTES - len(PNG))
    assert (await upload(client, alice, item_id, exactly)).status_code == 201


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"just text", "text/plain", 415, "unsupported_media_type"),
        (PDF, "image/png", 415, "unsupported_media_type"),
        (b"<svg onload=alert(1)>", "image/svg+xml", 415, "unsupported_media_type"),
        (b"GIF8", "image/gif", 415, "unsupported_media_type"),
        (b"", "image/png", 422, "validation_error"),
    ],
)
async def test_content_must_be_an_allowed_type_and_match_its_bytes(
    client: AsyncClient,
    settings: Settings,
    storage_overrides: dict[str, Any],
    content: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    response = await upload(client, alice, item_id, content, content_type=content_type)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert await stored_keys(storage_overrides) == []


async def test_each_allowed_type_is_recognised(client: AsyncClient, settings: Settings) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    samples = {
        "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "image/gif": b"GIF89a\x01\x00\x01\x00\x00\x00",
        "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
        "application/pdf": PDF,
        "image/png": PNG,
    }
    for content_type, content in samples.items():
        response = await upload(client, alice, item_id, content, content_type=content_type)
        assert response.status_code == 201, (content_type, response.text)
        assert response.json()["content_type"] == content_type


async def test_unknown_items_and_attachments_are_404(
    client: AsyncClient, settings: Settings
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    missing = uuid.uuid4()
    assert (await upload(client, alice, str(missing), PNG)).status_code == 404
    url = f"{ITEMS}/{item_id}/attachments/{missing}"
    assert (await client.get(url, headers=alice)).status_code == 404
    assert (await client.get(f"{ITEMS}/{item_id}/attachments/x", headers=alice)).status_code == 422
    # A deleted item takes its attachments out of reach with it (until restored).
    location = (await upload(client, alice, item_id, PNG)).headers["location"]
    assert (await client.delete(f"{ITEMS}/{item_id}", headers=alice)).status_code == 204
    assert (await client.get(location, headers=alice)).status_code == 404
    assert (await client.post(f"{ITEMS}/{item_id}/restore", headers=alice)).status_code == 200
    assert (await fetch_download(client, location, alice)).content == PNG


async def test_a_slow_upload_holds_no_database_connection(
    database_url: str, clean_db: None, storage_overrides: dict[str, Any]
) -> None:
    # One connection in the pool: while the upload streams in, another request gets it.
    settings = make_settings(
        database_url, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_POOL_TIMEOUT=1, **storage_overrides
    )
    async with running_app(settings) as (_, client):
        alice = caller(settings, "alice")
        item_id = await new_item(client, alice)
        during: list[int] = []

        async def slow() -> AsyncIterator[bytes]:
            yield PNG
            listed = await client.get(ITEMS, headers=alice)
            during.append(listed.status_code)
            yield b"\x00" * 10

        response = await upload(client, alice, item_id, slow())
        assert response.status_code == 201, response.text
        assert during == [200]


async def test_an_item_deleted_while_its_file_uploads_keeps_no_file(
    client: AsyncClient, settings: Settings, storage_overrides: dict[str, Any]
) -> None:
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)

    async def racing() -> AsyncIterator[bytes]:
        yield PNG
        deleted = await client.delete(f"{ITEMS}/{item_id}", headers=alice)
        assert deleted.status_code == 204
        yield b"\x00" * 10

    response = await upload(client, alice, item_id, racing())
    assert response.status_code == 404
    assert await stored_keys(storage_overrides) == []


async def test_an_item_holds_a_bounded_number_of_attachments(
    client: AsyncClient,
    settings: Settings,
    storage_overrides: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "MAX_ATTACHMENTS_PER_ITEM", 2)
    alice = caller(settings, "alice")
    item_id = await new_item(client, alice)
    for _ in range(2):
        assert (await upload(client, alice, item_id, PNG)).status_code == 201
    refused = await upload(client, alice, item_id, PNG)
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == "An item has at most 2 attachments."
    assert len(await stored_keys(storage_overrides)) == 2


async def test_an_upload_cut_short_by_the_client_stores_nothing_and_is_no_error(
    settings: Settings, storage_overrides: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        asgi = WithLifespanState(app, dict(state or {}))
        transport = httpx.ASGITransport(app=asgi)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            alice = caller(settings, "alice")
            item_id = await new_item(client, alice)
        messages: list[Message] = [
            {"type": "http.request", "body": PNG[:100], "more_body": True},
            {"type": "http.disconnect"},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return messages.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        path = f"{ITEMS}/{item_id}/attachments"
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"filename=cut.png",
            "headers": [
                (b"host", b"testserver"),
                (b"authorization", alice["Authorization"].encode()),
                (b"content-type", b"image/png"),
                (b"transfer-encoding", b"chunked"),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        with caplog.at_level(logging.INFO):
            await asgi(scope, receive, send)
        assert sent[0]["status"] == 400
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert "client disconnected" in caplog.text
        assert await stored_keys(storage_overrides) == []
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            listed = await client.get(f"{ITEMS}/{item_id}/attachments", headers=alice)
        assert listed.json() == []


async def test_the_purge_removes_the_files_of_purged_items(
    client: AsyncClient,
    settings: Settings,
    storage_overrides: dict[str, Any],
    db_engine: AsyncEngine,
) -> None:
    alice = caller(settings, "alice")
    expired, kept = await new_item(client, alice), await new_item(client, alice)
    for item_id in (expired, expired, kept):
        assert (await upload(client, alice, item_id, PNG)).status_code == 201
    for item_id in (expired, kept):
        assert (await client.delete(f"{ITEMS}/{item_id}", headers=alice)).status_code == 204
    old = utcnow() - timedelta(days=settings.SOFT_DELETE_RETENTION_DAYS + 1)
    async with db_engine.begin() as conn:
        backdate = update(Item).where(col(Item.id) == uuid.UUID(expired))
        await conn.execute(backdate.values(deleted_at=old))
    cutoff = utcnow() - timedelta(days=settings.SOFT_DELETE_RETENTION_DAYS)
    storage = await create_storage(settings)
    try:
        purged = await purge_attachments(
            create_session_factory(db_engine), storage, deleted_before=cutoff
        )
    finally:
        await storage.aclose()
    assert purged == 2
    keys = await stored_keys(storage_overrides)
    assert keys == [key for key in keys if uuid.UUID(kept).hex in key]
    assert len(keys) == 1
    async with db_engine.connect() as conn:
        rows = await conn.scalar(select(func.count()).select_from(ItemAttachment))
    assert rows == 1


async def test_storage_down_is_a_503_and_readiness_reports_it(
    database_url: str, clean_db: None
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(database_url, S3_TIMEOUT=0.5, **s3_overrides(closed, "files"))
    async with running_app(settings) as (_, client):
        alice = caller(settings, "alice")
        item_id = await new_item(client, alice)  # the rest of the API is unaffected
        response = await upload(client, alice, item_id, PNG)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "storage_unavailable"
        assert error["message"] == "File storage is unavailable; try again later."
        assert response.headers["retry-after"] == "5"
        assert closed not in response.text
        listed = await client.get(f"{ITEMS}/{item_id}/attachments", headers=alice)
        assert listed.json() == []  # no row for a file that was never stored
        ready = await client.get("/api/v1/public/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "degraded"
        assert body["components"]["storage"]["status"] == "down"


async def test_readiness_reports_s3_storage_and_not_a_directory(
    database_url: str, clean_db: None, s3_endpoint: str, storage_overrides: dict[str, Any]
) -> None:
    settings = make_settings(database_url, **storage_overrides)
    async with running_app(settings) as (_, client):
        body = (await client.get("/api/v1/public/health/ready")).json()
    assert body["status"] == "ok"
    if storage_overrides["STORAGE_BACKEND"] == "s3":
        assert body["components"]["storage"]["status"] == "up"
    else:
        assert "storage" not in body["components"]

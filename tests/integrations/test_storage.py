"""The storage interface on both backends: a directory, and a real S3-compatible
server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.core.config import Settings
from app.integrations.storage import (
    CHUNK_SIZE,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    check_at_startup,
    check_key,
    create_storage,
)
from app.integrations.storage.s3 import PART_SIZE
from tests.s3 import s3_client, s3_overrides, stored_keys, unfinished_uploads
from tests.support import free_port


@pytest.fixture
async def storage(storage_overrides: dict[str, Any]) -> AsyncIterator[Storage]:
    opened = await create_storage(Settings(_env_file=None, **storage_overrides))
    yield opened
    await opened.aclose()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def failing_after(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise RuntimeError("the source broke")


async def test_a_stored_object_reads_back_whole_and_in_chunks(storage: Storage) -> None:
    size = await storage.put("docs/a.txt", chunks(b"hello ", b"world"), content_type="text/plain")
    assert size == 11
    assert await storage.exists("docs/a.txt")
    async with await storage.open("docs/a.txt") as stored:
        assert stored.size == 11
        assert await stored.read() == b"hello world"
    await storage.put("docs/a.txt", chunks(b"replaced"), content_type="text/plain")
    async with await storage.open("docs/a.txt") as stored:
        assert await stored.read() == b"replaced"


async def test_a_large_object_streams_in_parts_and_reads_back(
    storage: Storage, storage_overrides: dict[str, Any]
) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    count = PART_SIZE // len(block) + 2  # more than one S3 part
    size = await storage.put("big/blob", chunks(*[block] * count), content_type="x/y")
    assert size == len(block) * count
    async with await storage.open("big/blob") as stored:
        assert stored.size == size
        digest, read = hashlib.sha256(), 0
        async for chunk in stored:
            assert len(chunk) <= CHUNK_SIZE  # streamed, never read whole
            digest.update(chunk)
            read += len(chunk)
        assert read == size
        assert digest.digest() == hashlib.sha256(block * count).digest()
    assert await stored_keys(storage_overrides) == ["big/blob"]


@pytest.mark.parametrize("parts", [1, PART_SIZE // (1 << 20) + 2])
async def test_a_source_failing_midway_stores_nothing(
    storage: Storage, storage_overrides: dict[str, Any], parts: int
) -> None:
    block = b"x" * (1 << 20)
    with pytest.raises(RuntimeError, match="the source broke"):
        await storage.put("half/written", failing_after(*[block] * parts), content_type="x/y")
    assert await stored_keys(storage_overrides) == []
    assert not await storage.exists("half/written")
    if storage_overrides["STORAGE_BACKEND"] == "s3":  # no multipart upload left open
        bucket = storage_overrides["S3_BUCKET"]
        assert await unfinished_uploads(storage_overrides["S3_ENDPOINT_URL"], bucket) == []


async def test_missing_objects_and_deletes(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError):
        await storage.open("nothing/here")
    assert not await storage.exists("nothing/here")
    await storage.delete("nothing/here")  # not an error
    await storage.put("gone/soon", chunks(b"1"), content_type="text/plain")
    await storage.delete("gone/soon")
    assert not await storage.exists("gone/soon")
    with pytest.raises(ObjectNotFoundError):
        await storage.open("gone/soon")


async def test_list_yields_the_objects_under_a_prefix(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    for key in ("exports/a.csv", "exports/b.csv", "attachments/x/1", "exportsx/c"):
        await storage.put(key, chunks(b"abc"), content_type="text/csv")
    listed = [info async for info in storage.list("exports/")]
    assert sorted(info.key for info in listed) == ["exports/a.csv", "exports/b.csv"]
    assert all(info.size == 3 and info.modified_at > before for info in listed)
    assert [info async for info in storage.list("nothing/")] == []


async def test_list_leaves_out_what_the_app_could_not_have_stored(
    storage: Storage, storage_overrides: dict[str, Any]
) -> None:
    await storage.put("exports/items-1.csv", chunks(b"a"), content_type="text/csv")
    # What other tools leave: a console's folder marker, Finder's and NFS's files.
    if storage_overrides["STORAGE_BACKEND"] == "s3":
        async with s3_client(storage_overrides["S3_ENDPOINT_URL"]) as client:
            for key in ("exports/", "exports/.DS_Store"):
                await client.put_object(Bucket=storage_overrides["S3_BUCKET"], Key=key, Body=b"")
    else:
        root = Path(storage_overrides["STORAGE_DIR"]) / "exports"
        for name in (".DS_Store", ".nfs0000000001"):
            await asyncio.to_thread((root / name).write_bytes, b"")
    listed = [info.key async for info in storage.list("exports/")]
    assert listed == ["exports/items-1.csv"]


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/absolute", "a//b", ".hidden", "a/./b", "", "a\\b", "é"]
)
async def test_keys_that_could_leave_the_root_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        check_key(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.put(key, chunks(b"x"), content_type="text/plain")
    with pytest.raises(ValueError, match="invalid storage key"):
        await storage.open(key)


async def test_presigned_urls_download_with_a_plain_client_until_they_expire(
    storage: Storage,
) -> None:
    await storage.put("files/report", chunks(b"%PDF-1.7 body"), content_type="application/pdf")
    if not storage.supports_presigned_urls:
        with pytest.raises(NotImplementedError):
            await storage.presigned_url(
                "files/report", expires_in=60, filename="r.pdf", content_type="application/pdf"
            )
        return
    signed_at = datetime.now(UTC).replace(microsecond=0)
    url = await storage.presigned_url(
        "files/report", expires_in=90, filename="Q3 report é.pdf", content_type="application/pdf"
    )
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7 body"
    assert response.headers["content-type"] == "application/pdf"
    assert "filename*=UTF-8''Q3%20report%20%C3%A9.pdf" in response.headers["content-disposition"]
    # The expiry is part of what is signed: X-Amz-Date plus X-Amz-Expires seconds.
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["90"]
    issued = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(issued - signed_at) < timedelta(seconds=5)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "X-Amz-Signature" in query


async def test_s3_unreachable_or_missing_bucket_is_storage_unavailable(
    s3_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for overrides, reason in (
        (s3_overrides(closed, "some-bucket") | {"S3_TIMEOUT": 0.5}, "unreachable"),
        (s3_overrides(s3_endpoint, "no-such-bucket"), "the bucket does not exist"),
    ):
        storage = await create_storage(Settings(_env_file=None, **overrides))
        try:
            with pytest.raises(StorageUnavailableError) as raised:
                await storage.check()
            assert reason in raised.value.reason
            assert raised.value.status_code == 503
            with pytest.raises(StorageUnavailableError):
                await storage.put("a/b", chunks(b"x"), content_type="text/plain")
            with pytest.raises(StorageUnavailableError):
                await storage.open("a/b")
            caplog.clear()
            with caplog.at_level(logging.WARNING, "app.integrations.storage"):
                await check_at_startup(storage, timeout=10)
            (line,) = [r.getMessage() for r in caplog.records if "unusable" in r.getMessage()]
            assert reason in line
            assert "test-secret-key" not in caplog.text
        finally:
            await storage.aclose()


async def test_an_unusable_directory_is_storage_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    await asyncio.to_thread(blocker.write_text, "x")
    storage = await create_storage(Settings(_env_file=None, STORAGE_DIR=str(blocker)))
    with pytest.raises(StorageUnavailableError):
        await storage.check()
    with pytest.raises(StorageUnavailableError):
        await storage.put("a/b", chunks(b"x"), content_type="text/plain")

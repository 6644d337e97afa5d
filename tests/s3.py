"""A real S3-compatible server on loopback for the storage tests: moto's server mode
(`moto[server]`, in the dev group), started once per test run in its own process, with
a fresh bucket per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiobotocore.session import get_session

from tests.support import free_port

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"  # moto accepts any credentials
REGION = "us-east-1"


@contextlib.asynccontextmanager
async def moto_server() -> AsyncIterator[str]:
    """Start `python -m moto.server` on a free loopback port; yields its URL."""
    port = free_port()
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    await client.get(f"{url}/moto-api/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the moto S3 server did not start within 15 s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        await process.wait()


@contextlib.asynccontextmanager
async def s3_client(endpoint: str) -> AsyncIterator[Any]:
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


async def create_bucket(endpoint: str) -> str:
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    async with s3_client(endpoint) as client:
        await client.create_bucket(Bucket=bucket)
    return bucket


async def object_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    async with s3_client(endpoint) as client:
        listed = await client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(entry["Key"] for entry in listed.get("Contents", []))


async def unfinished_uploads(endpoint: str, bucket: str) -> list[str]:
    async with s3_client(endpoint) as client:
        listed = await client.list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in listed.get("Uploads", [])]


def s3_overrides(endpoint: str, bucket: str) -> dict[str, Any]:
    """Settings that keep files in `bucket` on the test server."""
    return {
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION": REGION,
        "S3_ACCESS_KEY_ID": ACCESS_KEY,
        "S3_SECRET_ACCESS_KEY": SECRET_KEY,
        "S3_FORCE_PATH_STYLE": True,
    }


def filesystem_overrides(root: Path) -> dict[str, Any]:
    return {"STORAGE_BACKEND": "filesystem", "STORAGE_DIR": str(root)}


async def stored_keys(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key stored under `prefix`, read straight from the backend's server or disk."""
    if overrides["STORAGE_BACKEND"] == "s3":
        return await object_keys(overrides["S3_ENDPOINT_URL"], overrides["S3_BUCKET"], prefix)

    def walk() -> list[str]:
        root = Path(overrides["STORAGE_DIR"])
        keys = (path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())
        return sorted(key for key in keys if key.startswith(prefix))

    return await asyncio.to_thread(walk)


async def fetch_download(
    client: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> httpx.Response:
    """GET a download route as a browser would: following the S3 backend's redirect to
    a presigned URL with a plain client (no credentials); the filesystem backend's
    answer as it is."""
    response = await client.get(url, headers=headers)
    if response.status_code != 307:
        return response
    assert response.headers["cache-control"] == "private, no-store"
    async with httpx.AsyncClient() as plain:
        return await plain.get(response.headers["location"])

"""The S3 backend (`STORAGE_BACKEND=s3`, the `storage` extra): AWS S3 or any
S3-compatible service (MinIO, Cloudflare R2, ...) through aiobotocore.

One client, opened at start-up and closed at shutdown, serves every request (it pools
its connections). Objects up to `PART_SIZE` are sent in one PutObject; larger ones in a
multipart upload that is aborted if the source fails, so a failed write leaves nothing.
Credentials come from `S3_ACCESS_KEY_ID`/`S3_SECRET_ACCESS_KEY` when set, otherwise from
the standard AWS chain (environment, shared files, web identity, instance role).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from app.integrations.storage import (
    CHUNK_SIZE,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    StoredObject,
    check_key,
    content_disposition,
    is_valid_key,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

    from app.core.config import Settings

logger = logging.getLogger(__name__)

# S3's smallest part is 5 MiB (except the last); 8 MiB keeps memory per upload small.
PART_SIZE = 8 * 1024 * 1024
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_REASONS = {
    "404": "the bucket does not exist",
    "NoSuchBucket": "the bucket does not exist",
    "403": "access denied (check the credentials and the bucket's policy)",
    "AccessDenied": "access denied (check the credentials and the bucket's policy)",
    "InvalidAccessKeyId": "the access key is not known to the service",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
}


@contextlib.contextmanager
def _unavailable(bucket: str) -> Iterator[None]:
    """Backend failures as StorageUnavailableError with the reason for the log (never
    a credential: botocore's messages name the operation, bucket and error code)."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        reason = _REASONS.get(code, f"{code or 'error'}: {exc}")
        raise StorageUnavailableError(f"S3 bucket {bucket!r}: {reason}") from exc
    except (BotoCoreError, OSError, TimeoutError) as exc:
        reason = f"unreachable ({type(exc).__name__}: {exc})"
        raise StorageUnavailableError(f"S3 bucket {bucket!r} {reason}") from exc


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in _MISSING


class _Body(StoredObject):
    def __init__(self, body: Any, size: int, bucket: str) -> None:
        super().__init__(size)
        self._body = body
        self._bucket = bucket
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _unavailable(self._bucket):
            async for chunk in self._body.iter_chunks(CHUNK_SIZE):
                yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._body.aclose()


class S3Storage(Storage):
    name = "s3"
    supports_presigned_urls = True

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        exit_stack: contextlib.AsyncExitStack,
        public_client: S3Client | None = None,
        endpoint: str = "",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self._public_client = public_client or client
        self._exit_stack = exit_stack
        self._endpoint = endpoint

    @classmethod
    async def connect(cls, settings: Settings) -> Self:
        """A client for the bucket `settings` name (presigned URLs may use a second
        one, for the endpoint browsers reach: `S3_PUBLIC_ENDPOINT_URL`)."""
        session = get_session()
        secret = settings.S3_SECRET_ACCESS_KEY
        options: dict[str, Any] = {
            "region_name": settings.S3_REGION or None,
            "aws_access_key_id": settings.S3_ACCESS_KEY_ID or None,
            "aws_secret_access_key": secret.get_secret_value() if secret else None,
            "config": AioConfig(
                connect_timeout=settings.S3_TIMEOUT,
                read_timeout=settings.S3_TIMEOUT,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path" if settings.S3_FORCE_PATH_STYLE else "auto"},
                signature_version="s3v4",
            ),
        }
        endpoint = settings.S3_ENDPOINT_URL or None
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                session.create_client("s3", endpoint_url=endpoint, **options)
            )
            public = None
            if settings.S3_PUBLIC_ENDPOINT_URL:
                public = await stack.enter_async_context(
                    session.create_client(
                        "s3", endpoint_url=settings.S3_PUBLIC_ENDPOINT_URL, **options
                    )
                )
            return cls(
                client,
                settings.S3_BUCKET,
                exit_stack=stack.pop_all(),
                public_client=public,
                endpoint=endpoint or "AWS",
            )

    async def aclose(self) -> None:
        await self._exit_stack.aclose()

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        check_key(key)
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = await self._start_upload(key, content_type)
                    parts.append(await self._send_part(key, upload_id, len(parts) + 1, buffer))
                    buffer = bytearray()
            with _unavailable(self.bucket):
                if upload_id is None:
                    await self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=bytes(buffer), ContentType=content_type
                    )
                else:
                    if buffer:
                        parts.append(await self._send_part(key, upload_id, len(parts) + 1, buffer))
                    await self.client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                    )
                    upload_id = None
        finally:
            if upload_id is not None:
                await self._abort_upload(key, upload_id)
        return size

    async def _start_upload(self, key: str, content_type: str) -> str:
        with _unavailable(self.bucket):
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type
            )
        return created["UploadId"]

    async def _send_part(
        self, key: str, upload_id: str, number: int, data: bytearray
    ) -> CompletedPartTypeDef:
        with _unavailable(self.bucket):
            sent = await self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(data)
            )
        return {"ETag": sent["ETag"], "PartNumber": number}

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        # If this fails too, the parts stay until the bucket's lifecycle rule for
        # incomplete multipart uploads removes them (docs/storage.md).
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
            logger.warning("could not abort the multipart upload of %s: %s", key, exc)

    async def open(self, key: str) -> StoredObject:
        check_key(key)
        with _unavailable(self.bucket):
            try:
                response = await self.client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    raise ObjectNotFoundError(key) from None
                raise
        return _Body(response["Body"], response["ContentLength"], self.bucket)

    async def delete(self, key: str) -> None:
        check_key(key)
        with _unavailable(self.bucket):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def exists(self, key: str) -> bool:
        check_key(key)
        with _unavailable(self.bucket):
            try:
                await self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return False
                raise
        return True

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _unavailable(self.bucket):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    if is_valid_key(entry["Key"]):
                        yield ObjectInfo(entry["Key"], entry["Size"], entry["LastModified"])

    async def presigned_url(
        self, key: str, *, expires_in: int, filename: str, content_type: str
    ) -> str:
        check_key(key)
        with _unavailable(self.bucket):
            return await self._public_client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                    "ResponseContentType": content_type,
                },
                ExpiresIn=expires_in,
            )

    async def check(self) -> None:
        with _unavailable(self.bucket):
            await self.client.head_bucket(Bucket=self.bucket)

    def describe(self) -> str:
        return f"the S3 bucket {self.bucket!r} at {self._endpoint}"

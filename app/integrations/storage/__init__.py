"""File storage: the interface exports and attachments use, and the backend settings pick.

Two backends implement `Storage`:

* `FilesystemStorage` (`STORAGE_BACKEND=filesystem`, the default): files under
  `STORAGE_DIR`. No extra needed; fine for one host, but several API and worker
  processes on different hosts need a volume they all mount.
* `S3Storage` (`STORAGE_BACKEND=s3`, the `storage` extra): any S3-compatible service
  (AWS S3, MinIO, Cloudflare R2, ...). Downloads are handed to the service through
  short-lived presigned URLs, so file bytes never pass through the API.

Keys are made by the app (`exports/items-<job id>.csv`, `attachments/<item>/<id>`),
never taken from a client, and `check_key` refuses anything that could leave the
storage root. A backend that cannot be reached raises `StorageUnavailableError`,
rendered as a 503 in the standard error shape.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

from app.core.exceptions import ServiceUnavailableError

if TYPE_CHECKING:
    from app.core.config import Settings

logger = logging.getLogger(__name__)

# Segments of letters, digits, '.', '_' and '-', joined by '/', none empty or starting
# with '.' (so no '..'): a key names one object below the root and nothing else.
_KEY = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*(/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)*")
MAX_KEY_LENGTH = 512
CHUNK_SIZE = 64 * 1024


class StorageUnavailableError(ServiceUnavailableError):
    code = "storage_unavailable"
    default_message = "File storage is unavailable; try again later."

    def __init__(self, reason: str) -> None:
        super().__init__(headers={"Retry-After": "5"})
        self.reason = reason  # for logs only: clients see the message above

    @property
    def log_message(self) -> str:
        return f"{self.message} ({self.reason})"


class ObjectNotFoundError(LookupError):
    """No object is stored under the key."""


def is_valid_key(key: str) -> bool:
    return len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key) is not None


def check_key(key: str) -> str:
    """`key` if it is a well-formed object key, else ValueError."""
    if not is_valid_key(key):
        raise ValueError(f"invalid storage key {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: datetime


class StoredObject(ABC):
    """An object being read: its size, then its bytes in chunks. Close it (or use it
    as `async with`) when done, even if not every chunk was read; closing twice is
    harmless."""

    def __init__(self, size: int) -> None:
        self.size = size

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def read(self) -> bytes:
        """Every byte at once (for small objects and tests)."""
        return b"".join([chunk async for chunk in self])

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class Storage(ABC):
    """Where the app keeps files. Every method raises `StorageUnavailableError` when the
    backend cannot be reached or refuses the app's credentials."""

    name: str
    supports_presigned_urls: bool = False

    @abstractmethod
    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        """Store the bytes `chunks` yields under `key`, replacing any object there, and
        return how many there were. All or nothing: readers see the old object (or none)
        until the new one is complete, and if `chunks` raises nothing is stored."""

    @abstractmethod
    async def open(self, key: str) -> StoredObject:
        """The object under `key`, to read in chunks; `ObjectNotFoundError` if none."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object under `key`; a key with no object is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a directory-like `a/b/`) and is
        a key the app could have made: others (folder markers, `.DS_Store`, NFS's
        `.nfs*` files) are none of its business."""

    async def presigned_url(
        self, key: str, *, expires_in: int, filename: str, content_type: str
    ) -> str:
        """A URL that downloads the object, without credentials, for `expires_in`
        seconds, as an attachment named `filename`, where `supports_presigned_urls`."""
        raise NotImplementedError(f"the {self.name} backend makes no presigned URLs")

    @abstractmethod
    async def check(self) -> None:
        """Raise `StorageUnavailableError` unless the backend is reachable and usable."""

    async def aclose(self) -> None:  # noqa: B027 (a backend with nothing to close)
        """Release connections; the lifespan calls it once on shutdown."""

    @abstractmethod
    def describe(self) -> str:
        """Where files go, for log lines (never a credential)."""


async def create_storage(settings: Settings) -> Storage:
    """The backend `STORAGE_BACKEND` names, opened; close it with `aclose()`."""
    if settings.STORAGE_BACKEND == "s3":
        from app.integrations.storage.s3 import S3Storage  # the `storage` extra

        return await S3Storage.connect(settings)
    from app.integrations.storage.filesystem import FilesystemStorage

    return FilesystemStorage(settings.STORAGE_DIR)


async def check_at_startup(storage: Storage, timeout: float) -> None:
    """Log at start-up, precisely, why file storage cannot be used; serving goes on
    (routes that move files answer 503 until it can)."""
    try:
        async with asyncio.timeout(timeout):
            await storage.check()
    except StorageUnavailableError as exc:
        logger.warning(
            "file storage (%s) is unusable at start-up: %s; exports and attachments "
            "answer 503 until it is",
            storage.describe(),
            exc.reason,
        )
    except TimeoutError:
        logger.warning(
            "file storage (%s) did not answer within %gs at start-up; exports and "
            "attachments answer 503 until it does",
            storage.describe(),
            timeout,
        )
    else:
        logger.info("files are kept in %s", storage.describe())


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name (RFC 6266)."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_" for ch in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def require_storage_extra() -> None:
    """Raise ConfigError naming the extra when STORAGE_BACKEND=s3 cannot be served."""
    from app.core.config import ConfigError

    try:
        import aiobotocore  # noqa: F401
    except ImportError:
        raise ConfigError(
            "STORAGE_BACKEND=s3 needs the `storage` extra: install it with "
            "`uv sync --extra storage` (or `pip install 'aiobotocore>=2.15'`)"
        ) from None


__all__ = [
    "CHUNK_SIZE",
    "ObjectInfo",
    "ObjectNotFoundError",
    "Storage",
    "StorageUnavailableError",
    "StoredObject",
    "check_at_startup",
    "check_key",
    "content_disposition",
    "create_storage",
    "is_valid_key",
    "require_storage_extra",
]

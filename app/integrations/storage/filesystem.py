"""The filesystem backend: objects are files below one directory (`STORAGE_DIR`).

Writes go to a temporary file beside the target and are renamed over it once
complete, so a reader never sees half an object. File I/O runs in worker threads:
nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from app.integrations.storage import (
    CHUNK_SIZE,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    StoredObject,
    check_key,
    is_valid_key,
)

PART_SUFFIX = ".part"
# Bytes gathered before each write: fewer thread hops than one per incoming chunk.
WRITE_BUFFER = 1024 * 1024


class _File(StoredObject):
    def __init__(self, file: BinaryIO, size: int) -> None:
        super().__init__(size)
        self._file = file

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await asyncio.to_thread(self._file.read, CHUNK_SIZE):
            yield chunk

    async def aclose(self) -> None:
        if not self._file.closed:
            await asyncio.to_thread(self._file.close)


class FilesystemStorage(Storage):
    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> int:
        path = self._path(key)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PART_SUFFIX}")
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            file = await asyncio.to_thread(partial.open, "wb")
        except OSError as exc:
            raise StorageUnavailableError(_reason(exc)) from exc
        size = 0
        try:
            buffer = bytearray()
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= WRITE_BUFFER:
                    await asyncio.to_thread(file.write, buffer)
                    buffer = bytearray()
            await asyncio.to_thread(_finish, file, buffer, partial, path)
        except BaseException as exc:
            await asyncio.to_thread(_discard, file, partial)
            if isinstance(exc, OSError):
                raise StorageUnavailableError(_reason(exc)) from exc
            raise
        return size

    async def open(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise StorageUnavailableError(_reason(exc)) from exc
        size = await asyncio.to_thread(lambda: os.fstat(file.fileno()).st_size)
        return _File(file, size)

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        except OSError as exc:
            raise StorageUnavailableError(_reason(exc)) from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        # Interrupted writes' temporary files are listed too: the exports' clean-up by
        # age removes what a crash left behind there.
        for info in await asyncio.to_thread(lambda: list(self._walk(prefix))):
            yield info

    def _walk(self, prefix: str) -> Iterator[ObjectInfo]:
        directory, _, _ = prefix.rpartition("/")
        start = self.root / check_key(directory) if directory else self.root
        for folder, _, names in os.walk(start):
            for name in names:
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or not is_valid_key(key):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    async def check(self) -> None:
        def writable() -> bool:
            self.root.mkdir(parents=True, exist_ok=True)
            return os.access(self.root, os.W_OK | os.X_OK)

        try:
            usable = await asyncio.to_thread(writable)
        except OSError as exc:
            raise StorageUnavailableError(_reason(exc)) from exc
        if not usable:
            raise StorageUnavailableError(f"{self.root} is not writable")

    def describe(self) -> str:
        return f"the directory {self.root.resolve()}"


def _reason(exc: OSError) -> str:
    return f"{exc.strerror or type(exc).__name__}: {exc.filename}"


def _finish(file: BinaryIO, buffer: bytes | bytearray, partial: Path, path: Path) -> None:
    file.write(buffer)
    file.close()
    os.replace(partial, path)


def _discard(file: BinaryIO, partial: Path) -> None:
    file.close()
    partial.unlink(missing_ok=True)

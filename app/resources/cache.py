"""A versioned read-through cache of single rows, written through after each commit.

Reads try Redis first and fill it on a miss; a write stores what it committed (a
deletion as a tombstone) once the transaction commits, never before (a rolled-back
write leaves the cache alone). Entries carry the row's version and a fill never
replaces a newer one (`Cache.set_json_if_newer`), so a read racing a write cannot
put the old row back. A Redis outage only costs speed: every call degrades to a miss.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from app.core import metrics
from app.core.cache import Cache
from app.core.db import on_commit
from app.core.exceptions import NotFoundError
from app.resources.scope import OwnerScope

Schema = TypeVar("Schema", bound=BaseModel)


class VersionedCache(Generic[Schema]):
    """Rows of one resource as `schema`, under `prefix:<scope>:<id>` for `ttl` seconds."""

    def __init__(self, prefix: str, schema: type[Schema], *, ttl: float, not_found: str) -> None:
        self.prefix = prefix
        self.schema = schema
        self.ttl = ttl
        self.not_found = not_found

    def key(self, scope: OwnerScope, row_id: uuid.UUID) -> str:
        return scope.key(self.prefix, row_id)

    def _parse(self, entry: Any) -> Schema | None:
        """The cached row; None for a miss or an entry this code cannot read (written by
        another release, say); `NotFoundError` for a cached deletion."""
        if not isinstance(entry, dict):
            return None
        if entry.get("deleted") is True:
            raise NotFoundError(self.not_found)
        try:
            return self.schema.model_validate(entry)
        except ValidationError:
            return None

    async def read(
        self,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        load: Callable[[], Awaitable[Any]],
    ) -> Schema:
        """The row from the cache, or from `load()` (then cached)."""
        key = self.key(scope, row_id)
        cached = self._parse(await cache.get_json(key))
        if cache.redis is not None:
            metrics.CACHE_READS.labels("miss" if cached is None else "hit").inc()
        if cached is not None:
            return cached
        row = self.schema.model_validate(await load())
        await cache.set_json_if_newer(key, row.model_dump(mode="json"), ttl=self.ttl)
        return row

    def store_after_commit(
        self,
        session: AsyncSession,
        cache: Cache,
        scope: OwnerScope,
        row_id: uuid.UUID,
        version: int,
        written: Schema,
        deleted: bool,
    ) -> None:
        """Once `session` commits, cache what it wrote (a tombstone for a deletion)."""
        key = self.key(scope, row_id)
        if deleted:
            entry: dict[str, Any] = {"version": version, "deleted": True}
        else:
            entry = written.model_dump(mode="json")

        async def store() -> None:
            await cache.set_json_if_newer(key, entry, ttl=self.ttl)

        on_commit(session, store)

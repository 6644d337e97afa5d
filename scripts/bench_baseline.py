"""The bare app the benchmark compares against: the physical minimum of a FastAPI
request. No middleware, settings, auth or ORM: `/live` answers without I/O and `/db`
runs `SELECT 1` on a plain driver connection (an asyncpg pool capped like the
template's, or one aiosqlite connection for SQLite).

    BENCH_DATABASE_URL=postgresql://... uvicorn scripts.bench_baseline:app
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))


class _SQLite:
    def __init__(self, path: str) -> None:
        self.path = path

    async def __aenter__(self) -> _SQLite:
        import aiosqlite

        self.connection = await aiosqlite.connect(self.path)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.connection.close()

    async def fetchval(self, query: str) -> Any:
        async with self.connection.execute(query) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, Any]]:
    url = os.environ.get("BENCH_DATABASE_URL", "sqlite:///./bench.db")
    if url.startswith("sqlite"):
        async with _SQLite(url.split(":///", 1)[1]) as database:
            yield {"db": database}
        return
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    async with asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE) as pool:
        yield {"db": pool}


app = FastAPI(lifespan=lifespan)


@app.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/db")
async def select1(request: Request) -> dict[str, int]:
    return {"value": await request.state.db.fetchval("SELECT 1")}

"""The bare FastAPI app the benchmark compares against: no middleware, no error
handling, no settings; one route without I/O and one that runs `SELECT 1`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[dict[str, object]]:
    url = os.environ.get("BENCH_DATABASE_URL", "sqlite+aiosqlite:///./bench.db")
    engine = create_async_engine(url)
    yield {"engine": engine}
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/select1")
async def select1(request: Request) -> dict[str, int]:
    async with request.state.engine.connect() as conn:
        value = (await conn.execute(text("SELECT 1"))).scalar_one()
    return {"value": value}

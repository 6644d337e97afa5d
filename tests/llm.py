"""An OpenAI-compatible server on loopback for the AI tests, written here against the
documented chat-completions wire format (JSON, and `stream: true` as Server-Sent
Events of `chat.completion.chunk` objects ending in `data: [DONE]`), plus a helper
that serves any ASGI app with uvicorn, for tests that need real HTTP streaming."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from tests.support import free_port

UPSTREAM_DETAIL = "upstream detail that must not leak"


@dataclass
class FakeLLM:
    """Answers each request with the next entry of `script`: "ok", "hang" (no answer
    until the client leaves: `request_abandoned` is set then), "broken" (a stream whose
    second event is not JSON), or (status, headers) for an error. A stream sends
    `pieces`; with `hold_after_first`, it waits for `release` after the first piece
    (the test checks it arrived first)."""

    script: list[Any] = field(default_factory=lambda: ["ok"])
    pieces: tuple[str, ...] = ("Hel", "lo", ", ", "world")
    hold_after_first: bool = False
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    request_abandoned: asyncio.Event = field(default_factory=asyncio.Event)
    request_received: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> ASGIApp:
        return Starlette(routes=[Route("/v1/chat/completions", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append((dict(request.headers), body))
        self.request_received.set()
        behaviour = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(behaviour, tuple):
            status, headers = behaviour
            error = {"error": {"message": UPSTREAM_DETAIL, "type": "error", "code": None}}
            return JSONResponse(error, status_code=status, headers=headers)
        if behaviour == "hang":
            while not await request.is_disconnected():  # noqa: ASYNC110 (Starlette polls)
                await asyncio.sleep(0.05)
            self.request_abandoned.set()
            return Response(status_code=499)
        if behaviour == "broken":
            return StreamingResponse(self._broken(body), media_type="text/event-stream")
        if behaviour == "stream" or body.get("stream"):
            return StreamingResponse(self._chunks(body), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(self.pieces)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            }
        )

    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def _broken(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        yield self._chunk(body, {"content": self.pieces[0]}, None)
        yield b"data: {this is not json\n\n"

    async def _chunks(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield self._chunk(body, {"role": "assistant", "content": ""}, None)
            for index, piece in enumerate(self.pieces):
                yield self._chunk(body, {"content": piece}, None)
                if index == 0 and self.hold_after_first:
                    await self.release.wait()
            yield self._chunk(body, {}, "stop")
            usage = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            }
            yield f"data: {json.dumps(usage)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                self.stream_cancelled.set()


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, *, lifespan: Literal["auto", "on", "off"] = "off"
) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan,
        access_log=False, timeout_graceful_shutdown=1,  # a "hang" request is cut short
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            await task  # raises what stopped it
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task

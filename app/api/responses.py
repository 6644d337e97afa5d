"""Responses whose body is the schema the route declares, checked when the app is built.

A handler that sets headers (`ETag`, `Location`) or a status of its own returns a
response object, which FastAPI sends as it is, without the `response_model` check. So
such handlers return `ModelResponse[ItemRead]`: mypy checks that the body is an
`ItemRead`, and `check_routes` (run by `create_app`) that the route declares
`response_model=ItemRead`. The document and the responses cannot drift apart: a
route declaring one schema and returning another, or returning an unchecked
`Response` under a `response_model`, stops the app from starting.
"""

from __future__ import annotations

import types
import typing
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import anyio
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

Schema = TypeVar("Schema", bound=BaseModel)


class ModelResponse(Response, Generic[Schema]):
    """`body` as JSON (rendered by pydantic-core), with a status and headers."""

    media_type = "application/json"

    def __init__(
        self, body: Schema, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body.__pydantic_serializer__.to_json(body), status_code, headers)


class ReleasingStream(StreamingResponse):
    """A streamed body whose source is released however the response ends (sent, the
    client gone mid-way or before the first byte, a failure): `release` is awaited,
    shielded from the cancellation that ended it, so what feeds the stream (a file, an
    upstream request) goes at once, not when the garbage collector finds it."""

    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        release: Callable[[], Awaitable[object]],
        **options: Any,
    ) -> None:
        super().__init__(content, **options)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()


class EventStream(ReleasingStream):
    """Server-Sent Events a route answers instead of its `response_model` when asked
    to stream (documented in its `responses`): never cached, never buffered by a proxy.
    When it ends, `events` is closed, then `on_close` (the source feeding `events`,
    which may never have started) awaited."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncGenerator[bytes],
        *,
        on_close: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        async def release() -> None:
            await events.aclose()
            if on_close is not None:
                await on_close()

        super().__init__(
            events,
            release=release,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


class Replayed(Response):
    """A stored response sent again (an `Idempotency-Key` retry): the bytes were a
    `ModelResponse` of the same route the first time."""


def etag(version: int) -> str:
    return f'"{version}"'


def tagged(body: Schema, status_code: int = 200, **headers: str) -> ModelResponse[Schema]:
    """`body` with its `ETag` from its `version` (and any other `headers`: `Location`)."""
    version = vars(body)["version"]
    return ModelResponse(body, status_code, {"ETag": etag(version), **headers})


def _returns(route: APIRoute) -> set[Any]:
    annotation = typing.get_type_hints(route.endpoint).get("return")
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set(typing.get_args(annotation))
    return {annotation}


def check_routes(routes: Iterable[BaseRoute]) -> None:
    """Refuse a route whose return annotation does not match its `response_model`."""
    for route in routes:
        if not isinstance(route, APIRoute) or route.response_model is None:
            continue
        declared = route.response_model
        returned = _returns(route) - {Replayed, EventStream}
        if returned in ({declared}, {ModelResponse[declared]}):  # type: ignore[valid-type]
            continue
        raise TypeError(
            f"{route.name} ({route.path}) declares response_model={declared!r} but returns "
            f"{' | '.join(map(repr, returned))}: return {declared!r} itself or "
            f"ModelResponse[{getattr(declared, '__name__', declared)}] (app/api/responses.py)"
        )

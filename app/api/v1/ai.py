"""AI completions: `POST /ai/completions`, the reference route for calling a language
model: authenticated, rate limited per caller (`RATE_LIMIT_AI`), input bounded by
settings, answered as JSON or, with `stream: true`, as Server-Sent Events relayed as
the model generates them."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Request
from starlette.requests import ClientDisconnect

from app.api.deps import ActiveAccount, SettingsDep
from app.api.openapi import errors
from app.api.responses import EventStream, ModelResponse
from app.core.exceptions import AppError, NotFoundError, error_body
from app.core.logging import request_id_var
from app.core.ratelimit import rate_limit
from app.integrations.ai import ChatMessage, Completion, LanguageModel, StreamEnd
from app.schemas.ai import CompletionRequest, CompletionResponse, TokenUsage
from app.services import ai as service

T = TypeVar("T")
router = APIRouter(prefix="/ai", tags=["ai"], dependencies=[ActiveAccount])
limit_completions = rate_limit(scope="ai:completions")  # RATE_LIMIT_AI


async def get_language_model(request: Request) -> LanguageModel:
    model: LanguageModel | None = request.state.ai_model
    if model is None:
        raise NotFoundError("No language model is configured (AI_MODEL).")
    return model


LanguageModelDep = Annotated[LanguageModel, Depends(get_language_model)]
_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "example": 'data: {"delta": "Hel"}\n\nevent: done\ndata: {"model": ...}\n\n',
            }
        },
        "description": "The answer; with `stream: true`, Server-Sent Events: a `data` "
        'event `{"delta": "..."}` per piece of text, then `done` with the usage (or '
        "`error` with the standard error body if the model fails midway).",
    }
}


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, or `ClientDisconnect` as soon as the client goes away: a model
    call nobody waits for any more is cancelled (closing its connection to the
    provider), instead of running, and billing, to the end."""
    outcome: list[T] = []
    failure: list[Exception] = []

    async def run() -> None:
        try:
            outcome.append(await work)
        except Exception as exc:  # re-raised below, outside the task group
            failure.append(exc)
        scope.cancel()

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async with anyio.create_task_group() as group:
        scope = group.cancel_scope
        group.start_soon(run)
        group.start_soon(watch)
    if failure:
        raise failure[0]
    if not outcome:
        close = getattr(work, "close", None)
        if close is not None:  # never started: no "never awaited" warning
            close()
        raise ClientDisconnect()
    return outcome[0]


def _usage(end: StreamEnd | Completion) -> TokenUsage:
    usage = end.usage
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )


def _event(data: dict[str, Any], name: str | None = None) -> bytes:
    prefix = f"event: {name}\n" if name else ""
    return f"{prefix}data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post(
    "/completions",
    response_model=CompletionResponse,
    responses=_STREAM_DOC | errors(404, 429, 502, 503, 504),
    dependencies=[limit_completions],
)
async def create_completion(
    body: CompletionRequest, request: Request, model: LanguageModelDep, settings: SettingsDep
) -> ModelResponse[CompletionResponse] | EventStream:
    """Answer a conversation with the configured model, whole or streamed."""
    messages = [ChatMessage(message.role, message.content) for message in body.messages]
    max_tokens = service.check_input(settings, messages, body.max_tokens)
    if not body.stream:
        completion = await unless_client_leaves(
            request, service.complete_chat(model, messages, max_tokens=max_tokens)
        )
        usage = _usage(completion)
        return ModelResponse(
            CompletionResponse(
                content=completion.content,
                model=completion.model,
                finish_reason=completion.finish_reason,
                usage=usage,
            )
        )
    stream = service.stream_chat(model, messages, max_tokens=max_tokens)
    # The first piece is awaited here: a model that fails at once (rate limited,
    # unreachable) is an ordinary error response, not a stream holding an error.
    try:
        first = await unless_client_leaves(request, anext(stream))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return EventStream(_relay(first, stream), on_close=stream.aclose)


async def _relay(
    first: str | StreamEnd, stream: AsyncGenerator[str | StreamEnd]
) -> AsyncGenerator[bytes]:
    item: str | StreamEnd | None = first
    try:
        while item is not None:
            if isinstance(item, StreamEnd):
                yield _event(
                    {
                        "model": item.model,
                        "finish_reason": item.finish_reason,
                        "usage": _usage(item).model_dump(),
                    },
                    "done",
                )
            else:
                yield _event({"delta": item})
            item = await anext(stream, None)
    except AppError as exc:  # the model failed midway: say so in the stream, then end it
        body = error_body(exc.code, exc.message, request_id=request_id_var.get())
        yield _event(body, "error")
    finally:
        await stream.aclose()

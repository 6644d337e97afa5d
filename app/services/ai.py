"""Chat completions on the configured language model, with the bounds settings set and
the token usage logged and counted per request."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence

from app.core import metrics
from app.core.config import Settings
from app.core.exceptions import ValidationError
from app.integrations.ai import ChatMessage, Completion, LanguageModel, StreamEnd, Usage

logger = logging.getLogger(__name__)


def check_input(settings: Settings, messages: Sequence[ChatMessage], max_tokens: int | None) -> int:
    """The output token cap for this request (the asked one, at most AI_MAX_OUTPUT_TOKENS);
    a 422 in the standard shape for input past the bounds."""
    problems = []  # in the shape of request validation errors' details
    if len(messages) > settings.AI_MAX_MESSAGES:
        problems.append(_problem("messages", f"at most {settings.AI_MAX_MESSAGES} messages"))
    size = sum(len(message.content) for message in messages)
    if size > settings.AI_MAX_INPUT_CHARS:
        limit = settings.AI_MAX_INPUT_CHARS
        problems.append(_problem("messages", f"at most {limit} characters in all ({size})"))
    if max_tokens is not None and max_tokens > settings.AI_MAX_OUTPUT_TOKENS:
        problems.append(_problem("max_tokens", f"at most {settings.AI_MAX_OUTPUT_TOKENS}"))
    if problems:
        raise ValidationError("The request is over the model's input bounds.", details=problems)
    return max_tokens or settings.AI_MAX_OUTPUT_TOKENS


def _problem(field: str, message: str) -> dict[str, object]:
    return {"loc": ["body", field], "message": message, "type": "too_long"}


def _account(model: str, usage: Usage, *, streamed: bool) -> None:
    metrics.AI_TOKENS.labels(model, "prompt").inc(usage.prompt_tokens)
    metrics.AI_TOKENS.labels(model, "completion").inc(usage.completion_tokens)
    logger.info(
        "language model %s used %d prompt + %d completion tokens%s",
        model,
        usage.prompt_tokens,
        usage.completion_tokens,
        " (streamed)" if streamed else "",
        extra={
            "model": model,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
        },
    )


async def complete_chat(
    model: LanguageModel, messages: Sequence[ChatMessage], *, max_tokens: int
) -> Completion:
    completion = await model.complete(messages, max_tokens=max_tokens)
    _account(completion.model, completion.usage, streamed=False)
    return completion


async def stream_chat(
    model: LanguageModel, messages: Sequence[ChatMessage], *, max_tokens: int
) -> AsyncGenerator[str | StreamEnd]:
    """The model's stream, passed through; usage accounted when it ends. A stream cut
    short (the client gone, the model failing) has no usage report: that is logged,
    with how much was relayed, so spending nobody saw still shows."""
    stream = model.stream(messages, max_tokens=max_tokens)
    pieces, ended = 0, False
    try:
        async for item in stream:
            if isinstance(item, StreamEnd):
                ended = True
                _account(item.model, item.usage, streamed=True)
            else:
                pieces += 1
            yield item
    finally:
        if not ended:
            metrics.AI_STREAMS_CUT_SHORT.labels(model.model).inc()
            logger.info(
                "language model %s stream cut short after %d pieces; usage unknown",
                model.model,
                pieces,
                extra={"model": model.model, "pieces": pieces},
            )
        await stream.aclose()

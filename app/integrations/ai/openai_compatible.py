"""The OpenAI-compatible model (the `ai` extra, the official `openai` async client).

One client per process, opened at start-up and closed at shutdown, pooling its
connections; the SDK's own retries (`AI_MAX_RETRIES`, with back-off, on connection
errors, 429 and 5xx) run before an error reaches the app. Errors are translated into
`AIError`s by status, never by message: provider messages can quote the input, and
none of them, nor the key, goes further than this module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Self

import anyio
import openai

from app.integrations.ai import (
    AIError,
    AIRateLimitedError,
    AIRequestRefusedError,
    AITimeoutError,
    AIUnavailableError,
    AIUpstreamError,
    ChatMessage,
    Completion,
    LanguageModel,
    StreamEnd,
    Usage,
)

if TYPE_CHECKING:
    from app.core.config import Settings

logger = logging.getLogger(__name__)


def _retry_after(exc: openai.APIStatusError) -> dict[str, str]:
    value = exc.response.headers.get("retry-after", "")
    seconds = value.split(".")[0]
    return {"Retry-After": seconds if seconds.isdigit() else "1"}


def translate(exc: Exception) -> AIError:
    """The `AIError` for an SDK exception (logged here with its class and status only)."""
    if isinstance(exc, openai.APITimeoutError):
        error: AIError = AITimeoutError()
    elif isinstance(exc, openai.APIConnectionError):
        error = AIUnavailableError()
    elif isinstance(exc, openai.RateLimitError):
        error = AIRateLimitedError(headers=_retry_after(exc))
    elif isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        error = AIRequestRefusedError()
    else:  # 5xx, a refused key (401, 403), an unknown model (404), a garbled answer
        error = AIUpstreamError()
    status = getattr(exc, "status_code", None)
    logger.warning(
        "language model call failed: %s%s", type(exc).__name__, f" ({status})" if status else ""
    )
    return error


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except openai.OpenAIError as exc:
        raise translate(exc) from None  # `from None`: no SDK detail in tracebacks either
    except ValueError as exc:  # an answer that is not the documented format (bad JSON)
        logger.warning("language model call failed: %s in the answer", type(exc).__name__)
        raise AIUpstreamError() from None


def _payload(messages: Sequence[ChatMessage]) -> list[Any]:
    return [{"role": message.role, "content": message.content} for message in messages]


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)


class OpenAICompatibleModel(LanguageModel):
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        *,
        token_parameter: str = "max_tokens",  # noqa: S107 (a parameter name)
    ) -> None:
        self.client = client
        self.model = model
        # OpenAI itself wants `max_completion_tokens` (its reasoning models refuse
        # `max_tokens`); compatible servers know `max_tokens`.
        self._token_parameter = token_parameter

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        key = settings.AI_API_KEY
        client = openai.AsyncOpenAI(
            # Local servers (Ollama, vLLM) need no key, but the client wants one.
            api_key=key.get_secret_value() if key else "unused",
            base_url=settings.AI_BASE_URL or None,
            timeout=settings.AI_TIMEOUT,
            max_retries=settings.AI_MAX_RETRIES,
        )
        parameter = "max_tokens" if settings.AI_BASE_URL else "max_completion_tokens"
        return cls(client, settings.AI_MODEL, token_parameter=parameter)

    async def aclose(self) -> None:
        await self.client.close()

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        with _translated():
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=_payload(messages),
                extra_body={self._token_parameter: max_tokens},
            )
        if not response.choices:
            logger.warning("language model call failed: an answer without choices")
            raise AIUpstreamError()
        choice = response.choices[0]
        return Completion(
            choice.message.content or "",
            response.model or self.model,
            choice.finish_reason,
            _usage(response.usage),
        )

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AsyncGenerator[str | StreamEnd]:
        with _translated():
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=_payload(messages),
                extra_body={self._token_parameter: max_tokens},
                stream=True,
                stream_options={"include_usage": True},
            )
        finish_reason: str | None = None
        usage = Usage()
        model = self.model
        try:
            with _translated():
                async for chunk in stream:
                    model = chunk.model or model
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices:
                        finish_reason = choice.finish_reason or finish_reason
                        if choice.delta.content:
                            yield choice.delta.content
        finally:
            # Also when the consumer stops early (a client gone): the HTTP response to
            # the provider is closed, which cancels the generation there. Shielded: a
            # cancelled request would otherwise cancel the close as well.
            with anyio.CancelScope(shield=True):
                await stream.close()
        yield StreamEnd(model, finish_reason, usage)

"""Language models (the `ai` extra): one small interface for OpenAI's chat API and
every server that speaks it (Azure OpenAI, vLLM, Ollama, LM Studio, gateways).

Handlers and jobs depend on `LanguageModel`, never on an SDK: `complete` answers at
once, `stream` yields the answer as it is generated and ends with the token usage.
`create_model(settings)` returns the OpenAI-compatible client (`AI_BASE_URL`,
`AI_API_KEY`, `AI_MODEL`); `FakeModel` answers from a script, for tests of code that
uses a model.

Upstream failures are `AIError`s that render in the standard error shape: a timeout
504, the provider's rate limit 429 with its `Retry-After`, a 5xx or a refused key 502,
an unreachable server 503, input the provider refuses 422. No message the provider
sent and no credential ever reaches the client or the log.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from app.core.exceptions import AppError

if TYPE_CHECKING:
    from app.core.config import Settings

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    finish_reason: str | None
    usage: Usage


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: why it ended and what it cost."""

    model: str
    finish_reason: str | None
    usage: Usage


class AIError(AppError):
    """A language model call failed; subclasses say how."""


class AITimeoutError(AIError):
    status_code = 504
    code = "upstream_timeout"
    default_message = "The language model did not answer in time."


class AIRateLimitedError(AIError):
    status_code = 429
    code = "upstream_rate_limited"
    default_message = "The language model's provider is rate limiting; retry later."


class AIUpstreamError(AIError):
    status_code = 502
    code = "upstream_error"
    default_message = "The language model's provider failed."


class AIUnavailableError(AIError):
    status_code = 503
    code = "upstream_unavailable"
    default_message = "The language model cannot be reached; retry later."


class AIRequestRefusedError(AIError):
    status_code = 422
    code = "upstream_refused_input"
    default_message = "The language model refused the input (too long, or not allowed)."


class LanguageModel(ABC):
    model: str

    @abstractmethod
    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        """The whole answer."""

    @abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AsyncGenerator[str | StreamEnd]:
        """The answer's text as it is generated, then one `StreamEnd`. Closing the
        iterator early (a client gone) cancels the upstream request."""

    async def aclose(self) -> None:  # noqa: B027 (a model with nothing to close)
        """Release connections; the lifespan calls it on shutdown."""


@dataclass
class FakeModel(LanguageModel):
    """A scripted model for tests: answers `reply` (streamed in `chunks`), or raises
    `error`; `calls` records what it was asked."""

    reply: str = "Hello from the fake model."
    chunks: Sequence[str] | None = None
    error: AIError | None = None
    model: str = "fake-model"
    calls: list[tuple[list[ChatMessage], int]] = field(default_factory=list)

    def _usage(self, messages: Sequence[ChatMessage]) -> Usage:
        prompt = sum(len(message.content.split()) for message in messages)
        return Usage(prompt, len(self.reply.split()))

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int) -> Completion:
        self.calls.append((list(messages), max_tokens))
        if self.error is not None:
            raise self.error
        return Completion(self.reply, self.model, "stop", self._usage(messages))

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int
    ) -> AsyncGenerator[str | StreamEnd]:
        self.calls.append((list(messages), max_tokens))
        if self.error is not None:
            raise self.error
        for chunk in self.chunks if self.chunks is not None else self.reply.split(" "):
            yield chunk
        yield StreamEnd(self.model, "stop", self._usage(messages))


def require_ai_extra(settings: Settings) -> None:
    """Raise ConfigError naming the extra when a model is configured but the extra is
    missing."""
    from app.core.config import ConfigError

    if not settings.AI_MODEL:
        return
    try:
        import openai  # noqa: F401
    except ImportError:
        raise ConfigError(
            "AI_MODEL needs the `ai` extra: install it with `uv sync --extra ai` "
            "(or leave AI_MODEL empty)"
        ) from None


def create_model(settings: Settings) -> LanguageModel | None:
    """The configured model; None when `AI_MODEL` is empty (the AI routes answer 404)."""
    if not settings.AI_MODEL:
        return None
    from app.integrations.ai.openai_compatible import OpenAICompatibleModel  # the extra

    return OpenAICompatibleModel.from_settings(settings)

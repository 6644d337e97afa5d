"""API contracts of the AI completions route."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1)


class CompletionRequest(BaseModel):
    """The conversation so far. Bounds on its size come from settings (AI_MAX_MESSAGES,
    AI_MAX_INPUT_CHARS, AI_MAX_OUTPUT_TOKENS) and are checked by the route."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    content: str
    model: str
    finish_reason: str | None
    usage: TokenUsage

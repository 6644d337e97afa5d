"""AI completions against an OpenAI-compatible server on loopback: JSON and streamed
answers over real HTTP, a disconnect cancelling the upstream call, every upstream
failure mapped, input bounds, the rate limit, and the key kept out of logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx import AsyncClient

from app.api.v1.ai import get_language_model
from app.core import metrics
from app.core.config import ConfigError, Settings, load_settings
from app.integrations.ai import AIRateLimitedError, FakeModel
from app.main import create_app
from tests.llm import UPSTREAM_DETAIL, FakeLLM, serve
from tests.support import (
    auth_headers,
    free_port,
    make_settings,
    production_config,
    running_app,
)

URL = "/api/v1/ai/completions"
KEY = "sk-test-9f8e7d6c5b4a-never-log-me"
ASK = {"messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
async def upstream(llm: FakeLLM) -> AsyncIterator[str]:
    async with serve(llm.app()) as url:
        yield f"{url}/v1"


def ai_settings(database_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "AI_BASE_URL": base_url,
        "AI_API_KEY": KEY,
        "AI_MODEL": "test-model",
        "AI_MAX_RETRIES": 0,
        "AI_TIMEOUT": 2.0,
        "AI_MAX_OUTPUT_TOKENS": 256,
    }
    return make_settings(database_url, **(values | overrides))


@pytest.fixture
def settings(database_url: str, clean_db: None, upstream: str) -> Settings:
    return ai_settings(database_url, upstream)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    async with running_app(settings) as (_, client):
        yield client


def caller(settings: Settings, sub: str = "alice") -> dict[str, str]:
    return auth_headers(settings, sub)


async def test_a_json_answer_with_its_usage_logged_and_counted(
    client: AsyncClient, settings: Settings, llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    before = metrics.AI_TOKENS.labels("test-model", "completion")._value.get()
    with caplog.at_level(logging.INFO, "app.services.ai"):
        response = await client.post(URL, json=ASK, headers=caller(settings))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "content": "Hello, world",
        "model": "test-model",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }
    ((headers, body),) = llm.requests
    assert headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == "test-model"
    assert body["messages"] == ASK["messages"]
    assert body["max_tokens"] == 256  # the cap from settings when none is asked
    (line,) = [r for r in caplog.records if r.name == "app.services.ai"]
    assert line.getMessage() == "language model test-model used 11 prompt + 4 completion tokens"
    assert metrics.AI_TOKENS.labels("test-model", "completion")._value.get() == before + 4


async def test_a_streamed_answer_is_relayed_as_it_arrives(
    database_url: str,
    clean_db: None,
    llm: FakeLLM,
    upstream: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ai_settings(database_url, upstream)
    llm.hold_after_first = True
    async with serve(create_app(settings), lifespan="on") as base, httpx.AsyncClient() as http:
        ask = {**ASK, "stream": True, "max_tokens": 50}
        with caplog.at_level(logging.INFO):
            async with http.stream(
                "POST", base + URL, json=ask, headers=caller(settings), timeout=10
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                assert response.headers["x-request-id"]
                lines = response.aiter_lines()
                # The first piece arrives while the model is still holding the rest:
                # nothing between the model and the client buffers the stream.
                first = await asyncio.wait_for(_next_data(lines), 5)
                assert first == {"delta": "Hel"}
                llm.release.set()
                events = [first]
                async for event in _events(lines):
                    events.append(event)
    assert [e["delta"] for e in events if "delta" in e] == ["Hel", "lo", ", ", "world"]
    done = events[-1]
    assert done["event"] == "done"
    assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    assert llm.requests[0][1]["stream"] is True
    assert llm.requests[0][1]["max_tokens"] == 50
    access = [r for r in caplog.records if r.name == "app.access"]
    assert [(r.__dict__["path"], r.__dict__["status"]) for r in access] == [(URL, 200)]
    usage = [r.getMessage() for r in caplog.records if r.name == "app.services.ai"]
    assert usage == ["language model test-model used 11 prompt + 4 completion tokens (streamed)"]


async def _next_data(lines: AsyncIterator[str]) -> dict[str, Any]:
    async for line in lines:
        if line.startswith("data: "):
            data: dict[str, Any] = json.loads(line[6:])
            return data
    raise AssertionError("the stream ended")


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    name = None
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            yield {"event": name, **data} if name else data
            name = None


async def test_a_client_leaving_mid_stream_cancels_the_upstream_call(
    database_url: str, clean_db: None, llm: FakeLLM, upstream: str
) -> None:
    settings = ai_settings(database_url, upstream)
    before = metrics.AI_STREAMS_CUT_SHORT.labels("test-model")._value.get()
    llm.hold_after_first = True  # the model would never finish on its own
    async with serve(create_app(settings), lifespan="on") as base, httpx.AsyncClient() as http:
        async with http.stream(
            "POST", base + URL, json={**ASK, "stream": True}, headers=caller(settings), timeout=10
        ) as response:
            assert await asyncio.wait_for(_next_data(response.aiter_lines()), 5) == {"delta": "Hel"}
        # The client closed the connection: the app closes its own to the model.
        await asyncio.wait_for(llm.stream_cancelled.wait(), 5)
    assert metrics.AI_STREAMS_CUT_SHORT.labels("test-model")._value.get() == before + 1


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "retry_after"),
    [
        ((429, {"Retry-After": "7"}), 429, "upstream_rate_limited", "7"),
        ((500, {}), 502, "upstream_error", None),
        ((503, {}), 502, "upstream_error", None),
        ((401, {}), 502, "upstream_error", None),
        ((400, {}), 422, "upstream_refused_input", None),
        ("hang", 504, "upstream_timeout", None),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_failures_are_mapped_and_the_key_never_shows(
    database_url: str,
    clean_db: None,
    llm: FakeLLM,
    upstream: str,
    caplog: pytest.LogCaptureFixture,
    behaviour: Any,
    status: int,
    code: str,
    retry_after: str | None,
    stream: bool,
) -> None:
    llm.script = [behaviour]
    # DEBUG: what the HTTP client and the SDK log about requests is captured too.
    settings = ai_settings(database_url, upstream, AI_TIMEOUT=0.5, LOG_LEVEL="DEBUG")
    with caplog.at_level(logging.DEBUG):
        async with running_app(settings) as (_, client):
            response = await client.post(
                URL, json={**ASK, "stream": stream}, headers=caller(settings)
            )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"]
    if retry_after:
        assert response.headers["retry-after"] == retry_after
    for text in (response.text, caplog.text):
        assert KEY not in text
        assert UPSTREAM_DETAIL not in text


async def test_a_model_failing_mid_stream_ends_the_stream_with_an_error_event(
    client: AsyncClient, settings: Settings, llm: FakeLLM
) -> None:
    llm.script = ["broken"]
    response = await client.post(URL, json={**ASK, "stream": True}, headers=caller(settings))
    assert response.status_code == 200  # the stream had begun
    events = [event async for event in _events(_lines(response.text))]
    assert events[0] == {"delta": "Hel"}
    assert events[-1]["event"] == "error"
    assert events[-1]["error"]["code"] == "upstream_error"
    assert events[-1]["error"]["request_id"] == response.headers["x-request-id"]


async def _lines(text: str) -> AsyncIterator[str]:
    for line in text.splitlines():
        yield line


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_leaving_before_the_answer_cancels_the_upstream_call(
    database_url: str,
    clean_db: None,
    llm: FakeLLM,
    upstream: str,
    caplog: pytest.LogCaptureFixture,
    stream: bool,
) -> None:
    llm.script = ["hang"]
    settings = ai_settings(database_url, upstream, AI_TIMEOUT=30)
    async with serve(create_app(settings), lifespan="on") as base, httpx.AsyncClient() as http:
        with caplog.at_level(logging.INFO):
            asking = asyncio.create_task(
                http.post(base + URL, json={**ASK, "stream": stream}, headers=caller(settings))
            )
            await asyncio.wait_for(llm.request_received.wait(), 5)
            asking.cancel()  # the client gives up and closes its connection
            await asyncio.wait_for(llm.request_abandoned.wait(), 5)
            await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_unreachable_model_is_503(database_url: str, clean_db: None) -> None:
    settings = ai_settings(database_url, f"http://127.0.0.1:{free_port()}/v1")
    async with running_app(settings) as (_, client):
        response = await client.post(URL, json=ASK, headers=caller(settings))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}] * 5}, "messages"),
        ({**ASK, "max_tokens": 257}, "max_tokens"),
        ({**ASK, "temperature": 2}, "temperature"),
    ],
)
async def test_input_past_the_bounds_is_422_and_never_sent(
    database_url: str,
    clean_db: None,
    llm: FakeLLM,
    upstream: str,
    body: dict[str, Any],
    field: str,
) -> None:
    settings = ai_settings(database_url, upstream, AI_MAX_MESSAGES=4, AI_MAX_INPUT_CHARS=2000)
    async with running_app(settings) as (_, client):
        response = await client.post(URL, json=body, headers=caller(settings))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in [".".join(map(str, detail["loc"][1:])) for detail in error["details"]]
    assert llm.requests == []


async def test_each_caller_has_a_completions_budget(
    database_url: str, redis_url: str, clean_db: None, llm: FakeLLM, upstream: str
) -> None:
    settings = ai_settings(database_url, upstream, REDIS_URL=redis_url, RATE_LIMIT_AI="2/minute")
    async with running_app(settings) as (_, client):
        me, other = caller(settings, f"ai-{free_port()}"), caller(settings, f"ai2-{free_port()}")
        answers = [await client.post(URL, json=ASK, headers=me) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 429]
        assert answers[2].json()["error"]["code"] == "rate_limited"
        assert (await client.post(URL, json=ASK, headers=other)).status_code == 200
    assert len(llm.requests) == 3


async def test_without_a_model_the_route_is_404_and_needs_a_token(
    database_url: str, clean_db: None
) -> None:
    settings = make_settings(database_url)
    async with running_app(settings) as (_, client):
        assert (await client.post(URL, json=ASK)).status_code == 401
        response = await client.post(URL, json=ASK, headers=caller(settings))
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No language model is configured (AI_MODEL)."


async def test_openai_itself_gets_max_completion_tokens(
    database_url: str,
    clean_db: None,
    llm: FakeLLM,
    upstream: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # AI_BASE_URL empty means OpenAI; the SDK's own variable points it here instead.
    monkeypatch.setenv("OPENAI_BASE_URL", upstream)
    settings = ai_settings(database_url, "")
    async with running_app(settings) as (_, client):
        assert (await client.post(URL, json=ASK, headers=caller(settings))).status_code == 200
    ((_, body),) = llm.requests
    assert body["max_completion_tokens"] == 256
    assert "max_tokens" not in body


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"AI_BASE_URL": "https://user:token@llm.example/v1"}, "must not carry credentials"),
        ({"AI_BASE_URL": "llm.example/v1"}, "AI_BASE_URL"),
        ({"RATE_LIMIT_AI": "lots"}, "RATE_LIMIT_AI"),
    ],
)
def test_bad_ai_settings_are_refused(overrides: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_settings(_env_file=None, **overrides)


def test_production_refuses_sending_the_key_in_clear() -> None:
    production = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": "s" * 48,
        "DATABASE_URL": "postgresql://app@db/app",
        **production_config(),
        "AI_MODEL": "m",
        "AI_API_KEY": KEY,
    }
    with pytest.raises(ConfigError, match="AI_BASE_URL must be https"):
        load_settings(_env_file=None, **production, AI_BASE_URL="http://llm.example/v1")
    for fine in ("https://llm.example/v1", "http://localhost:11434/v1", ""):
        assert load_settings(_env_file=None, **production, AI_BASE_URL=fine).is_production


async def test_the_fake_model_stands_in_for_a_real_one(database_url: str, clean_db: None) -> None:
    """How a fork tests code that uses a model: override the dependency."""
    settings = make_settings(database_url)
    app = create_app(settings)
    fake = FakeModel(reply="A scripted answer")
    app.dependency_overrides[get_language_model] = lambda: fake
    async with running_app(settings, app) as (_, client):
        answer = await client.post(URL, json=ASK, headers=caller(settings))
        streamed = await client.post(URL, json={**ASK, "stream": True}, headers=caller(settings))
        fake.error = AIRateLimitedError(headers={"Retry-After": "3"})
        limited = await client.post(URL, json=ASK, headers=caller(settings))
    assert answer.json()["content"] == "A scripted answer"
    assert answer.json()["model"] == "fake-model"
    assert '"delta": "scripted"' in streamed.text
    assert "event: done" in streamed.text
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert [messages[0].content for messages, _ in fake.calls] == ["Say hello"] * 3

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from httpx import AsyncClient
from pydantic import BaseModel

from app.core.config import Settings
from app.core.logging import JsonFormatter
from app.core.security import CurrentPrincipal
from app.main import create_app
from tests.support import make_settings, production_config, running_app

router = APIRouter()
handler_logger = logging.getLogger("app.test.handler")


@router.get("/log-something")
async def log_something() -> dict[str, str]:
    handler_logger.info("doing work")
    return {"done": "yes"}


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app: FastAPI = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as (_, client):
        yield client


async def test_a_request_id_is_generated_and_echoed(client: AsyncClient) -> None:
    first = await client.get("/api/v1/public/health")
    second = await client.get("/api/v1/public/health")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_sane_incoming_request_id_is_honoured(client: AsyncClient) -> None:
    response = await client.get("/api/v1/public/health", headers={"X-Request-ID": "abc-123.x:y"})
    assert response.headers["x-request-id"] == "abc-123.x:y"


@pytest.mark.parametrize("bad", ["a" * 200, "has space", "semi;colon", "<script>"])
async def test_an_unsafe_incoming_request_id_is_replaced(client: AsyncClient, bad: str) -> None:
    response = await client.get("/api/v1/public/health", headers={"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


async def test_error_responses_carry_the_request_id(client: AsyncClient) -> None:
    response = await client.get("/missing", headers={"X-Request-ID": "req-404"})
    assert response.headers["x-request-id"] == "req-404"
    assert response.json()["error"]["request_id"] == "req-404"


async def test_security_headers_are_on_every_response(client: AsyncClient) -> None:
    for path in ("/api/v1/public/health", "/missing"):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers


async def test_docs_page_is_served_without_the_api_csp(client: AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "content-security-policy" not in response.headers


async def test_production_adds_hsts(database_url: str) -> None:
    settings = make_settings(
        "postgresql+asyncpg://app@127.0.0.1:9/app",
        ENVIRONMENT="production",
        SECRET_KEY="k" * 40,
        **production_config(),
    )
    async with running_app(settings) as (_, client):
        response = await client.get("/api/v1/public/health")
        assert "max-age=" in response.headers["strict-transport-security"]
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/api/v1/openapi.json")).status_code == 404


async def test_one_access_log_line_per_request(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.access"):
        response = await client.get("/missing?x=1", headers={"X-Request-ID": "acc-1"})
    lines = [r for r in caplog.records if r.name == "app.access"]
    assert len(lines) == 1
    line = json.loads(JsonFormatter().format(lines[0]))
    assert response.status_code == 404
    assert line["method"] == "GET"
    assert line["path"] == "/missing"
    assert line["status"] == 404
    assert line["request_id"] == "acc-1"
    assert isinstance(line["duration_ms"], float)


async def test_logs_written_during_a_request_carry_its_id(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.get("/log-something")
    records = [r for r in caplog.records if r.name == "app.test.handler"]
    assert len(records) == 1
    formatted = json.loads(JsonFormatter().format(records[0]))
    assert formatted["request_id"] == response.headers["x-request-id"]
    assert formatted["message"] == "doing work"


async def test_cors_preflight_from_an_allowed_origin(database_url: str, clean_db: None) -> None:
    settings = make_settings(database_url, BACKEND_CORS_ORIGINS="https://app.example")
    async with running_app(settings) as (_, client):
        allowed = await client.options(
            "/api/v1/public/health",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"},
        )
        simple = await client.get(
            "/api/v1/public/health", headers={"Origin": "https://app.example"}
        )
        denied = await client.options(
            "/api/v1/public/health",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers
    exposed = simple.headers["access-control-expose-headers"].lower()
    for header in (
        "x-request-id",
        "etag",
        "location",
        "idempotent-replayed",
        "ratelimit-remaining",
    ):
        assert header in exposed


# --- request body limit ------------------------------------------------------------------

body_router = APIRouter(prefix="/bodies")


class Upload(BaseModel):
    data: str


@body_router.post("/small")
async def post_small(body: Upload, principal: CurrentPrincipal) -> dict[str, int]:
    """Limited by MAX_REQUEST_BODY_BYTES; authenticated, to show the limit comes first."""
    return {"size": len(body.data)}


@body_router.post("/large", max_body_size=64 * 1024)
async def post_large(body: Upload) -> dict[str, int]:
    """A route that allows more than the default."""
    return {"size": len(body.data)}


@pytest.fixture
async def body_client(database_url: str, clean_db: None) -> AsyncIterator[AsyncClient]:
    settings = make_settings(database_url, MAX_REQUEST_BODY_BYTES=4096)
    app: FastAPI = create_app(settings)
    app.include_router(body_router)
    async with running_app(settings, app) as (_, client):
        yield client


def payload(size: int) -> bytes:
    return json.dumps({"data": "x" * size}).encode()


def assert_too_large(response: Any) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "4096 bytes" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


async def test_a_declared_oversized_body_is_refused_before_authentication(
    body_client: AsyncClient,
) -> None:
    streamed: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(100):
            streamed.append(1)
            yield b"x" * 1024

    response = await body_client.post(
        "/bodies/small",
        content=body(),
        headers={"content-length": str(100 * 1024), "authorization": "Bearer not-a-token"},
    )
    assert_too_large(response)  # not a 401: no token was looked at
    assert len(streamed) <= 1  # and the body was not read


async def test_a_streamed_body_is_cut_off_once_it_crosses_the_limit(
    body_client: AsyncClient,
) -> None:
    streamed: list[int] = []

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length to go by
        for _ in range(100):
            streamed.append(1)
            yield b"x" * 1024

    response = await body_client.post("/bodies/small", content=body())
    assert_too_large(response)
    assert len(streamed) < 10


async def test_a_body_under_the_limit_and_a_route_that_allows_more(
    body_client: AsyncClient,
) -> None:
    json_type = {"content-type": "application/json"}
    response = await body_client.post("/bodies/large", content=payload(30_000), headers=json_type)
    assert response.status_code == 200
    assert response.json() == {"size": 30_000}
    unauthenticated = await body_client.post(
        "/bodies/small", content=payload(100), headers=json_type
    )
    assert unauthenticated.status_code == 401
    too_large = await body_client.post("/bodies/large", content=payload(70_000), headers=json_type)
    assert too_large.status_code == 413


# --- CORS on the last-resort 500 ---------------------------------------------------------

crash_router = APIRouter()


@crash_router.get("/crash")
async def crash() -> None:
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://app.example", True), ("https://evil.example", False)]
)
async def test_an_unhandled_500_keeps_cors_headers_for_an_allowed_origin(
    database_url: str, clean_db: None, origin: str, allowed: bool
) -> None:
    settings = make_settings(database_url, BACKEND_CORS_ORIGINS="https://app.example")
    app: FastAPI = create_app(settings)
    app.include_router(crash_router)
    async with running_app(settings, app) as (_, client):
        response = await client.get("/crash", headers={"Origin": origin})
    assert response.status_code == 500
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    if allowed:
        assert response.headers["access-control-allow-origin"] == origin
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    else:
        assert "access-control-allow-origin" not in response.headers

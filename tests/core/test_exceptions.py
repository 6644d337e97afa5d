import logging
from collections.abc import AsyncIterator

import pytest
from fastapi import APIRouter, FastAPI
from httpx import AsyncClient
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.core import exceptions
from app.core.config import Settings
from app.core.db import SessionDep
from app.main import create_app
from tests.support import auth_headers, make_settings, running_app

router = APIRouter(prefix="/boom")


class Payload(BaseModel):
    name: str = Field(min_length=1)
    count: int


@router.get("/app-error/{name}")
async def raise_app_error(name: str) -> None:
    error_class = getattr(exceptions, name)
    raise error_class(details={"hint": "from the service"})


@router.get("/crash")
async def crash() -> None:
    raise RuntimeError("database password is hunter2")


@router.get("/bad-sql")
async def bad_sql(session: SessionDep) -> None:
    conn = await session.connection()
    await conn.execute(text("SELECT * FROM no_such_table_secret_name"))


@router.get("/dropped-connection")
async def dropped_connection() -> None:
    raise DBAPIError("SELECT 1", {}, OSError("server closed"), connection_invalidated=True)


@router.post("/validate")
async def validate(payload: Payload) -> Payload:
    return payload


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app: FastAPI = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as (_, client):
        yield client


def assert_error_shape(body: dict[str, object], code: str) -> dict[str, object]:
    assert set(body) == {"error"}
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"code", "message", "request_id", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("NotFoundError", 404, "not_found"),
        ("ValidationError", 422, "validation_error"),
        ("ConflictError", 409, "conflict"),
        ("PreconditionFailedError", 412, "precondition_failed"),
        ("AuthenticationError", 401, "unauthenticated"),
        ("PermissionDeniedError", 403, "permission_denied"),
        ("RateLimitError", 429, "rate_limited"),
        ("ExternalServiceError", 502, "external_service_error"),
        ("ServiceUnavailableError", 503, "service_unavailable"),
    ],
)
async def test_app_errors_render_in_the_standard_shape(
    client: AsyncClient, name: str, status: int, code: str
) -> None:
    response = await client.get(f"/boom/app-error/{name}")
    assert response.status_code == status
    error = assert_error_shape(response.json(), code)
    assert error["details"] == {"hint": "from the service"}
    assert error["request_id"] == response.headers["x-request-id"]


async def test_unknown_route_is_a_404_in_the_standard_shape(client: AsyncClient) -> None:
    response = await client.get("/no/such/route")
    assert response.status_code == 404
    assert_error_shape(response.json(), "not_found")


async def test_wrong_method_is_a_405_in_the_standard_shape(client: AsyncClient) -> None:
    response = await client.delete("/api/v1/public/health")
    assert response.status_code == 405
    assert_error_shape(response.json(), "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_validation_errors_list_field_locations_and_messages(client: AsyncClient) -> None:
    response = await client.post("/boom/validate", json={"name": "", "count": "many"})
    assert response.status_code == 422
    error = assert_error_shape(response.json(), "validation_error")
    details = error["details"]
    assert isinstance(details, list)
    locations = {tuple(item["loc"]) for item in details}
    assert locations == {("body", "name"), ("body", "count")}
    assert all(item["message"] for item in details)


async def test_malformed_json_is_a_422_not_a_500(client: AsyncClient) -> None:
    response = await client.post(
        "/boom/validate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_error_shape(response.json(), "validation_error")


async def test_unhandled_errors_are_a_500_without_internals(
    client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.get("/boom/crash", headers={"x-request-id": "crash-1"})
    assert response.status_code == 500
    error = assert_error_shape(response.json(), "internal_error")
    assert error["request_id"] == "crash-1"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"] == "crash-1"
    logged = [r for r in caplog.records if r.name == "app.errors"]
    assert logged
    assert logged[0].exc_info is not None
    assert logged[0].request_id == "crash-1"  # type: ignore[attr-defined]


async def test_an_unreachable_database_is_a_503_not_a_500(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings("postgresql+asyncpg://app@127.0.0.1:9/app", DB_POOL_TIMEOUT=2)
    async with running_app(settings) as (_, client):
        response = await client.get("/api/v1/users/me", headers=auth_headers(settings, "u1"))
    assert response.status_code == 503
    error = assert_error_shape(response.json(), "service_unavailable")
    assert "127.0.0.1" not in response.text
    assert error["request_id"] == response.headers["x-request-id"]
    assert response.headers["retry-after"] == "1"


async def test_a_dropped_database_connection_is_a_503(client: AsyncClient) -> None:
    response = await client.get("/boom/dropped-connection")
    assert response.status_code == 503
    assert_error_shape(response.json(), "service_unavailable")


async def test_a_failing_query_is_a_500_that_shows_no_sql(client: AsyncClient) -> None:
    response = await client.get("/boom/bad-sql")
    assert response.status_code == 500
    assert_error_shape(response.json(), "internal_error")
    assert "no_such_table" not in response.text


async def test_a_body_that_is_not_utf8_is_a_422(client: AsyncClient) -> None:
    response = await client.post(
        "/boom/validate",
        content=b'{"name": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    error = assert_error_shape(response.json(), "validation_error")
    assert error["details"] == [
        {"loc": ["body"], "message": "The body is not UTF-8.", "type": "json_invalid"}
    ]


@router.get("/shared")
async def shared_get() -> None:
    """One of two routes on the same path."""


@router.put("/shared")
async def shared_put() -> None:
    """The other."""


async def test_405_allow_lists_every_route_on_the_path(client: AsyncClient) -> None:
    response = await client.delete("/boom/shared")
    assert response.status_code == 405
    assert_error_shape(response.json(), "method_not_allowed")
    assert response.headers["allow"] == "GET, PUT"


@pytest.mark.parametrize("method", ["PATCH", "DELETE", "GET"])
async def test_a_wrong_method_on_a_static_path_is_a_405_not_a_bad_id(
    settings: Settings, client: AsyncClient, method: str
) -> None:
    """`/items/exports` also fits `/items/{item_id}`, whose id check must not win."""
    response = await client.request(
        method, "/api/v1/items/exports", headers=auth_headers(settings, "u1"), json={}
    )
    assert response.status_code == 405
    assert_error_shape(response.json(), "method_not_allowed")
    assert response.headers["allow"] == "POST"
    malformed = await client.request(
        method, "/api/v1/items/not-an-id", headers=auth_headers(settings, "u1"), json={}
    )
    assert malformed.status_code == 422

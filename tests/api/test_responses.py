"""Routes cannot answer with a body other than the schema they document."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from httpx import ASGITransport, AsyncClient
from pydantic import BaseModel

from app.api.responses import ModelResponse, Replayed, check_routes, tagged


class Thing(BaseModel):
    name: str
    version: int


class Other(BaseModel):
    label: str


def _router() -> APIRouter:
    return APIRouter()


def test_a_route_returning_another_schema_than_it_declares_is_refused() -> None:
    router = _router()

    @router.get("/thing", response_model=Thing)
    async def read_thing() -> ModelResponse[Other]:
        return ModelResponse(Other(label="x"))

    with pytest.raises(TypeError, match=r"read_thing \(/thing\) declares response_model="):
        check_routes(router.routes)


def test_an_unchecked_response_under_a_response_model_is_refused() -> None:
    router = _router()

    @router.get("/thing", response_model=Thing)
    async def read_thing() -> Response:
        return Response(b'{"anything": 1}')

    with pytest.raises(TypeError, match=r"return .*Thing.* itself or ModelResponse"):
        check_routes(router.routes)


def test_matching_routes_pass() -> None:
    router = _router()

    @router.get("/a", response_model=Thing)
    async def plain() -> Thing:
        return Thing(name="a", version=1)

    @router.post("/b", response_model=Thing)
    async def created() -> ModelResponse[Thing] | Replayed:
        return tagged(Thing(name="b", version=3), 201)

    @router.delete("/c", status_code=204)
    async def removed() -> Response:
        return Response(status_code=204)

    check_routes(router.routes)


async def test_a_tagged_response_carries_its_body_status_and_etag() -> None:
    app = FastAPI()

    @app.post("/things", response_model=Thing, status_code=201)
    async def create_thing() -> ModelResponse[Thing]:
        return tagged(Thing(name="née", version=7), 201, Location="/things/1")

    check_routes(app.routes)
    async with AsyncClient(transport=ASGITransport(app), base_url="http://t") as client:
        response = await client.post("/things")
    assert response.status_code == 201
    assert response.json() == {"name": "née", "version": 7}
    assert response.headers["etag"] == '"7"'
    assert response.headers["location"] == "/things/1"
    assert response.headers["content-type"] == "application/json"

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import iter_route_contexts
from starlette.routing import NoMatchFound

from app.core.route_templates import path_for
from app.main import create_app
from tests.support import make_settings


def request_to(app: FastAPI) -> Request:
    return Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})


def test_path_for_builds_every_named_route_of_the_app_as_starlette_does() -> None:
    app = create_app(make_settings("sqlite+aiosqlite:///:memory:"))
    request = request_to(app)
    checked = 0
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        params = {name: f"value-{name}" for name in getattr(route, "param_convertors", {})}
        name = getattr(route, "name", None)
        if name is None:
            continue
        assert path_for(request, name, **params) == app.url_path_for(name, **params)
        checked += 1
    assert checked > 20
    assert path_for(request, "read_item", item_id="abc") == "/api/v1/items/abc"


def test_path_for_leaves_what_a_template_cannot_answer_to_starlette() -> None:
    app = FastAPI()
    files = APIRouter(prefix="/files")

    @files.get("/{path:path}", name="file")
    async def file(path: str) -> None: ...

    @files.get("/{a}/{b}", name="pair")
    async def pair(a: str, b: str) -> None: ...

    @files.get("/one/{a}", name="twice")
    async def first(a: str) -> None: ...

    @files.get("/two/{b}", name="twice")
    async def second(b: str) -> None: ...

    app.include_router(files, prefix="/v1")
    request = request_to(app)
    assert path_for(request, "file", path="a/b/c") == "/v1/files/a/b/c"  # a convertor
    assert path_for(request, "pair", a="x", b="y") == "/v1/files/x/y"
    assert path_for(request, "twice", a="x") == "/v1/files/one/x"
    assert path_for(request, "twice", b="y") == "/v1/files/two/y"  # the second of a name
    with pytest.raises(NoMatchFound):
        path_for(request, "pair", a="x")
    with pytest.raises(NoMatchFound):
        path_for(request, "missing")
    for bad in ("x/y", ""):  # Starlette refuses these for a plain parameter
        with pytest.raises(AssertionError):
            app.url_path_for("pair", a=bad, b="y")
        with pytest.raises(AssertionError):
            path_for(request, "pair", a=bad, b="y")

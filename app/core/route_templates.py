"""The full path template of the route a request matched (`/api/v1/items/{item_id}`),
for metrics labels and error reports, and `path_for` to build a route's path by name.

A route included through routers knows only its own part (`/items/{item_id}`); FastAPI
lists the full paths through `iter_route_contexts`. They are read once per app, on its
first lookup; a route added afterwards falls back to its own path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from string import Formatter
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import Request
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import Scope

_templates: WeakKeyDictionary[Any, dict[int, str]] = WeakKeyDictionary()
# Per app: route name -> (full template, its parameter names), for `path_for`.
_by_name: WeakKeyDictionary[Any, dict[str, tuple[str, frozenset[str]]]] = WeakKeyDictionary()
_PLAIN_PARAM = re.compile(r"\{\w+\}")


def route_templates(routes: Sequence[BaseRoute]) -> dict[int, str]:
    """Every route's full path template, by route object id."""
    templates: dict[int, str] = {}
    for context in iter_route_contexts(routes):
        if context.path is not None:
            templates.setdefault(id(context.original_route), context.path)
    return templates


def route_template(scope: Scope) -> str | None:
    """The matched route's full template; None when no route matched."""
    route = scope.get("route")
    if route is None:
        return None
    app = scope.get("app")
    templates = _templates.get(app) if app is not None else None
    if templates is None:
        templates = route_templates(getattr(app, "routes", ()))
        if app is not None:
            _templates[app] = templates
    return templates.get(id(route)) or getattr(route, "path", None)


def _named_templates(routes: Sequence[BaseRoute]) -> dict[str, tuple[str, frozenset[str]]]:
    named: dict[str, tuple[str, frozenset[str]]] = {}
    for context in iter_route_contexts(routes):
        name = getattr(context.original_route, "name", None)
        if context.path is None or name is None or name in named:
            continue
        # Only plain `{name}` parameters: a convertor (`{path:path}`) formats its value.
        if "{" in _PLAIN_PARAM.sub("", context.path):
            continue
        fields = frozenset(f for _, f, _, _ in Formatter().parse(context.path) if f)
        named[name] = (context.path, fields)
    return named


def path_for(request: Request, name: str, /, **params: str) -> str:
    """`request.app.url_path_for(name, **params)` (the path of a named route, for a
    `Location` header) from a template read once per app: Starlette's own lookup walks
    every route and router on each call. Anything the template cannot answer exactly
    the same way (other parameters, a convertor, a value with `/`) is left to it."""
    app = request.app
    named = _by_name.get(app)
    if named is None:
        named = _by_name[app] = _named_templates(app.routes)
    found = named.get(name)
    if (
        found is None
        or found[1] != params.keys()
        or not all(value and "/" not in value for value in params.values())
    ):
        return str(app.url_path_for(name, **params))
    return found[0].format_map(params)

"""The full path template of the route a request matched (`/api/v1/items/{item_id}`),
for metrics labels and error reports.

A route included through routers knows only its own part (`/items/{item_id}`); FastAPI
lists the full paths through `iter_route_contexts`. They are read once per app, on its
first lookup; a route added afterwards falls back to its own path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import Scope

_templates: WeakKeyDictionary[Any, dict[int, str]] = WeakKeyDictionary()


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

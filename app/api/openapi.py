"""The OpenAPI document as clients should see it.

* Operation ids are the handler's name in camelCase (`listItems`, `readMyProfile`), so
  generated clients get readable method names.
* Error responses come from what a route depends on, not from per-router dicts: a
  route that authenticates can answer 401 (and 503 when the identity provider is
  unreachable), one that checks the account 403, one that opens a database session
  503, one that is rate limited 429, one that reads input 422; a route adds only its
  own (404, 409, 412) with `errors(...)`, and its success headers with `success(...)`.
  Every error uses `ErrorResponse`; FastAPI's `HTTPValidationError` does not appear.
* Headers are declared: `X-Request-ID` on every response, `RateLimit-*` on limited
  routes, `Retry-After` on 429 and 503, `WWW-Authenticate` on 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from app.schemas.common import ErrorResponse

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
DESCRIPTIONS = {
    400: "The request could not be verified or understood.",
    401: "Missing, invalid or expired token.",
    403: "Not allowed: the account is deactivated, or a role is missing.",
    404: "Not found in the caller's scope.",
    409: "Conflicts with the resource's state.",
    412: "If-Match does not match the current version.",
    413: "The request body is over the route's size limit.",
    415: "The content type is not accepted, or the content is not of that type.",
    422: "Invalid input: `details` lists each problem.",
    429: "Rate limit exceeded; retry after `Retry-After` seconds.",
    502: "An upstream service failed.",
    503: (
        "A dependency is unreachable (database, identity provider, job queue, file "
        "storage); retry later."
    ),
    504: "An upstream service did not answer in time.",
}


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


REQUEST_ID = {"X-Request-ID": _header("The request's id, also in every log line it caused.")}
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": _header("Requests allowed per period.", "integer"),
    "RateLimit-Remaining": _header("Requests left in the current period.", "integer"),
    "RateLimit-Reset": _header("Seconds until the full budget is back.", "integer"),
}
RETRY_AFTER = {"Retry-After": _header("Seconds to wait before retrying.", "integer")}
WWW_AUTHENTICATE = {"WWW-Authenticate": _header("`Bearer`, with the error for a bad token.")}
ETAG = {"ETag": _header('The item\'s version, `"<n>"`: send it back in `If-Match`.')}
LOCATION = {"Location": _header("The URL of what was created or queued.")}
REPLAYED = {"Idempotent-Replayed": _header("`true` when answered from an Idempotency-Key.")}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for errors a route raises itself (404, 409, 412, ...)."""
    return {code: {"description": DESCRIPTIONS[code]} for code in codes}


def success(status: int, description: str, **declared: dict[str, Any]) -> dict[int | str, Any]:
    """`responses=` entry declaring the headers of a success response."""
    return {status: {"description": description, "headers": dict(declared)}}


def _dependency_errors() -> dict[Callable[..., Any], tuple[int, ...]]:
    # Imported here: the dependencies import half of the app.
    from app.api.deps import get_current_user, get_storage, require_active_account
    from app.api.idempotency import get_idempotency
    from app.api.preconditions import get_if_match
    from app.core.db import (
        get_read_connection,
        get_read_session,
        get_session,
        get_session_factory,
    )
    from app.core.security import get_optional_principal, get_principal
    from app.jobs.enqueue import get_job_statuses, get_jobs

    return {
        get_optional_principal: (401, 503),
        get_principal: (401, 503),
        require_active_account: (403, 503),
        get_current_user: (403, 503),
        get_session: (503,),
        get_read_session: (503,),
        get_read_connection: (503,),
        get_session_factory: (503,),
        get_if_match: (412,),
        get_idempotency: (422,),
        get_jobs: (503,),
        get_job_statuses: (503,),
        get_storage: (503,),
    }


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _reads_input(dependant: Dependant) -> bool:
    if dependant.body_params or dependant.query_params or dependant.path_params:
        return True
    if dependant.header_params:
        return True
    return any(_reads_input(dependency) for dependency in dependant.dependencies)


def route_errors(route: APIRoute, known: dict[Callable[..., Any], tuple[int, ...]]) -> set[int]:
    """The error statuses a route can answer because of what it depends on."""
    from app.core.ratelimit import RateLimit

    codes: set[int] = set()
    for call in _calls(route.dependant):
        codes.update(known.get(call, ()))
        codes.update(getattr(call, "error_responses", ()))
        if isinstance(call, RateLimit):
            codes.update((429, 503))
    if _reads_input(route.dependant):
        codes.add(422)
    return codes


def operation_id(route: APIRoute) -> str:
    """`list_items` -> `listItems`."""
    first, *rest = route.name.split("_")
    return first + "".join(part.title() for part in rest)


def _document(schema: dict[str, Any], app: FastAPI) -> None:
    known = _dependency_errors()
    from app.core.ratelimit import RateLimit

    for context in iter_route_contexts(app.routes):
        route, path = context.original_route, context.path
        if not isinstance(route, APIRoute) or not route.include_in_schema or path is None:
            continue
        codes = route_errors(route, known)
        limited = any(isinstance(call, RateLimit) for call in _calls(route.dependant))
        for method in route.methods or ():
            operation = schema["paths"][path].get(method.lower())
            if operation is not None:
                _complete(operation["responses"], codes, limited=limited)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorResponse"] = error_schema


def _complete(responses: dict[str, Any], codes: set[int], *, limited: bool) -> None:
    for code in sorted(codes | {int(c) for c in responses if c.isdigit() and int(c) >= 400}):
        response = responses.setdefault(str(code), {"description": DESCRIPTIONS.get(code, "")})
        content = response.get("content", {}).get("application/json", {}).get("schema", {})
        if content and "HTTPValidationError" not in content.get("$ref", ""):
            continue  # a route's own body (readiness' 503), not an error of the app's
        # FastAPI's own 422 body is not what the app sends.
        response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
        if code in (429, 503):
            response.setdefault("headers", {}).update(RETRY_AFTER)
        if code == 401:
            response.setdefault("headers", {}).update(WWW_AUTHENTICATE)
    for response in responses.values():
        declared = response.setdefault("headers", {})
        declared.update(REQUEST_ID)
        if limited:
            declared.update(RATE_LIMIT_HEADERS)


def install(app: FastAPI) -> None:
    """Build `app`'s document once, on first use, completed as described above."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _document(schema, app)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

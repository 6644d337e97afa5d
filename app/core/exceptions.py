"""The error hierarchy and the handlers that render every error in one JSON shape.

    {"error": {"code": "...", "message": "...", "request_id": "...", "details": ...}}

Services raise `AppError` subclasses; handlers here turn them, FastAPI's request
validation errors and Starlette's HTTP errors (404, 405, ...) into that body.
Unhandled exceptions are rendered by the request middleware as a bare 500 with the
same shape: their text and traceback go to the log, never to the client.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import sqlite3
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar, cast
from weakref import WeakKeyDictionary

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, compile_path

from app.core.error_reporting import report_request_exception
from app.core.logging import request_id_var

logger = logging.getLogger(__name__)


class AppError(Exception):
    """Base of every error the API reports on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(self.message)

    @property
    def log_message(self) -> str:
        """What the log says about the error: the message, or more than clients see."""
        return self.message


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"
    default_message = "Resource not found."


class ValidationError(AppError):
    status_code = 422
    code = "validation_error"
    default_message = "The request is invalid."


class ConflictError(AppError):
    status_code = 409
    code = "conflict"
    default_message = "The request conflicts with the current state of the resource."


class PreconditionFailedError(AppError):
    status_code = 412
    code = "precondition_failed"
    default_message = "The resource has changed since it was read."


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "The content type is not accepted."


class AuthenticationError(AppError):
    status_code = 401
    code = "unauthenticated"
    default_message = "Authentication required."


class PermissionDeniedError(AppError):
    status_code = 403
    code = "permission_denied"
    default_message = "You do not have permission to perform this action."


class RateLimitError(AppError):
    status_code = 429
    code = "rate_limited"
    default_message = "Too many requests."


class ExternalServiceError(AppError):
    status_code = 502
    code = "external_service_error"
    default_message = "An upstream service failed."


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"
    default_message = "The service is temporarily unavailable."


_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_body(
    code: str, message: str, details: Any = None, request_id: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id if request_id is not None else request_id_var.get(),
            "details": details,
        }
    }


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


async def _app_error_handler(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(AppError, exc)
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc.log_message)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


_RouteIndex = list[tuple[re.Pattern[str], str, frozenset[str], BaseRoute]]
_route_indexes: WeakKeyDictionary[FastAPI, tuple[int, _RouteIndex]] = WeakKeyDictionary()


def _route_index(app: FastAPI) -> _RouteIndex:
    """(path pattern, path template, methods, route) of every route, built on the first 405
    after the app's routes last changed (included routers are nested; this flattens)."""
    version = len(app.routes)
    cached = _route_indexes.get(app)
    if cached is not None and cached[0] == version:
        return cached[1]
    index = [
        (
            compile_path(context.path)[0],
            context.path,
            frozenset(context.methods),
            context.original_route,
        )
        for context in iter_route_contexts(app.routes)
        if context.path is not None and context.methods
    ]
    _route_indexes[app] = (version, index)
    return index


def _allowed_methods(request: Request, besides: object = None) -> str:
    """Every method some route serves at this path (Starlette names only the first
    matching route's), leaving out routes with the same path template as `besides`."""
    index = _route_index(request.app)
    excluded = {template for _, template, _, route in index if route is besides}
    path = get_route_path(request.scope)
    methods: set[str] = set()
    for pattern, template, route_methods, _ in index:
        if template not in excluded and pattern.match(path):
            methods |= route_methods
    return ", ".join(sorted(methods))


def _method_not_allowed(request: Request, allow: str) -> JSONResponse:
    message = f"Method {request.method} is not allowed on this path."
    return error_response(405, "method_not_allowed", message, headers={"Allow": allow})


def _undecodable_body(exc: StarletteHTTPException) -> bool:
    """FastAPI's 400 for a JSON body that is not UTF-8 (its 422 covers malformed JSON)."""
    return exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    if exc.status_code == 405:
        return _method_not_allowed(request, _allowed_methods(request))
    if _undecodable_body(exc):
        detail = {"loc": ["body"], "message": "The body is not UTF-8.", "type": "json_invalid"}
        return error_response(422, "validation_error", "The request is invalid.", [detail])
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    try:
        default = HTTPStatus(status).phrase
    except ValueError:
        default = "HTTP error"
    message = exc.detail if isinstance(exc.detail, str) else default
    if status == 404 and message == "Not Found":
        message = "No route matches this path."
    return error_response(status, code, message, headers=exc.headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for item in exc.errors():
        detail = {
            "loc": list(item.get("loc", ())),
            "message": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        details.append(jsonable_encoder(detail))
    return details


async def _request_validation_handler(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    if any(error.get("loc", ("",))[0] == "path" for error in exc.errors()):
        # `/items/exports` matched `/items/{item_id}` only because the method was not one
        # `/items/exports` serves: a path naming another route is that route, so 405.
        allow = _allowed_methods(request, besides=request.scope.get("route"))
        if allow:
            return _method_not_allowed(request, allow)
    return error_response(
        422, "validation_error", "The request is invalid.", _validation_details(exc)
    )


# SQLSTATE codes (and classes) meaning the database cannot serve the request right now,
# though a retry shortly may succeed: connection failures (08), out of resources (53:
# too many connections, ...), operator intervention (57P01-57P05: shutting down,
# starting up, ...), a statement cancelled by a timeout (57014) or a lock wait that
# timed out (55P03).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05", "57014", "55P03"})
# Network failures that mean "no route to the server right now".
_UNREACHABLE_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH,
     errno.ETIMEDOUT, errno.ECONNABORTED, errno.EPIPE}
)  # fmt: skip


def _sqlstate(exc: DBAPIError) -> str:
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(code, str):
            return code
    return ""


def _is_unreachable(exc: OSError) -> bool:
    return isinstance(exc, (ConnectionError, socket.gaierror)) or exc.errno in _UNREACHABLE_ERRNOS


def _is_database_unavailable(exc: Exception) -> bool:
    """A failure to reach the database, not of the query: the server is down, starting
    up, out of connections or unreachable, a pooled connection died, the pool is
    exhausted, or a wait on the server timed out. The request's transaction did not
    commit, so the client may safely retry."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc.orig, sqlite3.OperationalError):
            return "locked" in str(exc.orig) or "busy" in str(exc.orig)
        code = _sqlstate(exc)
        return code.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or code in _UNAVAILABLE_SQLSTATES
    if isinstance(exc, OSError):
        return _is_unreachable(exc)
    return isinstance(exc, (PoolTimeoutError, TimeoutError))


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    where = f"{request.method} {request.url.path}"
    if not _is_database_unavailable(exc):
        logger.error("unhandled error on %s", where, exc_info=exc)
        report_request_exception(exc, request.scope)
        return error_response(500, AppError.code, AppError.default_message)
    logger.warning("database unavailable on %s: %s", where, type(exc).__name__, exc_info=exc)
    return error_response(
        503,
        ServiceUnavailableError.code,
        "The database is unavailable; try again shortly.",
        headers={"Retry-After": "1"},
    )


async def _timeout_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bounded wait ran out (a statement, a connection attempt, an upstream call):
    nothing was committed, so the client may retry."""
    logger.warning("timed out on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        503,
        ServiceUnavailableError.code,
        "A service this request needs did not answer in time; try again shortly.",
        headers={"Retry-After": "1"},
    )


async def _client_disconnect_handler(request: Request, exc: Exception) -> JSONResponse:
    # The client left while sending its body (an upload cut short): nobody reads the
    # answer, and it is not the server's failure, so no traceback and no error report.
    logger.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(400, "bad_request", "The request body ended early.")


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(ClientDisconnect, _client_disconnect_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    for error in (DBAPIError, PoolTimeoutError, OSError):
        app.add_exception_handler(error, _database_error_handler)
    app.add_exception_handler(TimeoutError, _timeout_handler)

"""The error hierarchy and the handlers that render every error in one JSON shape.

    {"error": {"code": "...", "message": "...", "request_id": "...", "details": ...}}

Services raise `AppError` subclasses; handlers here turn them, FastAPI's request
validation errors and Starlette's HTTP errors (404, 405, ...) into that body.
Unhandled exceptions are rendered by the request middleware as a bare 500 with the
same shape: their text and traceback go to the log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

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
        logger.warning("%s: %s", type(exc).__name__, exc.message)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    status = exc.status_code
    code = _HTTP_CODES.get(status, "http_error" if status < 500 else "internal_error")
    try:
        default = HTTPStatus(status).phrase
    except ValueError:
        default = "HTTP error"
    message = exc.detail if isinstance(exc.detail, str) else default
    if status == 404 and message == "Not Found":
        message = "No route matches this path."
    elif status == 405 and message == "Method Not Allowed":
        message = f"Method {request.method} is not allowed on this path."
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
    return error_response(
        422, "validation_error", "The request is invalid.", _validation_details(exc)
    )


def _is_database_unavailable(exc: Exception) -> bool:
    """A failure of the connection to the database, not of the query: the database is
    down, restarting or unreachable, a pooled connection died, or the pool is exhausted.
    The request's transaction did not commit, so the client may safely retry."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    return isinstance(exc, (PoolTimeoutError, ConnectionError))


async def _database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    where = f"{request.method} {request.url.path}"
    if not _is_database_unavailable(exc):
        logger.error("unhandled database error on %s", where, exc_info=exc)
        return error_response(500, AppError.code, AppError.default_message)
    logger.warning("database unavailable on %s: %s", where, type(exc).__name__, exc_info=exc)
    return error_response(
        503,
        ServiceUnavailableError.code,
        "The database is unavailable; try again shortly.",
        headers={"Retry-After": "1"},
    )


def register_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    for error in (DBAPIError, PoolTimeoutError, ConnectionError):
        app.add_exception_handler(error, _database_error_handler)

"""Pure-ASGI middleware for the request path.

`RequestContextMiddleware` does the per-request work in a single layer, because
each ASGI layer costs a call and a wrapped `send` on every request:

* request id: honours a sane incoming `X-Request-ID`, otherwise generates one, puts it
  in a context variable for logs and echoes it on every response, errors included;
* security headers on every response;
* one structured access-log line per request;
* headers a dependency asked for with `set_response_header` (rate-limit headers, say),
  added to whatever response the request ends with, errors included;
* a last-resort 500 in the standard error shape for exceptions nothing else handled
  (the traceback is logged with the request id, never sent).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.exceptions import error_body
from app.core.logging import log_access, request_id_var

error_logger = logging.getLogger("app.errors")

REQUEST_ID_HEADER = b"x-request-id"
RESPONSE_HEADERS_KEY = "app.response_headers"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")

Headers = tuple[tuple[bytes, bytes], ...]
# The OWASP set for REST APIs: no MIME sniffing, no framing (the CSP below says it
# again for browsers that read only one of the two), HSTS in production.
_BASE_SECURITY_HEADERS: Headers = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
)
_API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            return value.decode("ascii") if _SANE_REQUEST_ID.fullmatch(value) else None
    return None


# Request ids only need to be unique, not secret: a PRNG seeded from the OS is enough
# and avoids a system call per request.
_random = random.Random(os.urandom(32))  # noqa: S311
_random_bits = _random.getrandbits
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_request_id() -> str:
    return f"{_random_bits(128):032x}"


def set_response_header(scope: Scope, name: bytes, value: bytes) -> None:
    """Put a header on this request's response, whatever it turns out to be (a 2xx, a
    handled error or the last-resort 500); `name` must be lower-case."""
    headers: dict[bytes, bytes] = scope.setdefault(RESPONSE_HEADERS_KEY, {})
    headers[name] = value


class RequestContextMiddleware:
    """Request id, security headers, access log and last-resort error rendering."""

    def __init__(
        self, app: ASGIApp, *, hsts: bool = False, docs_paths: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.docs_paths = frozenset(docs_paths)
        # Built once: the API's responses get a strict CSP; the docs pages (which load
        # Swagger UI / ReDoc assets) get the other headers only.
        self.docs_headers: Headers = _BASE_SECURITY_HEADERS + ((_HSTS,) if hsts else ())
        self.api_headers: Headers = (*self.docs_headers, _API_CSP)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or new_request_id()
        token = request_id_var.set(request_id)
        # Shared by reference, so it survives layers that copy the scope dict.
        added_headers: dict[bytes, bytes] = {}
        scope[RESPONSE_HEADERS_KEY] = added_headers
        started = time.perf_counter()
        status = 500
        response_started = False
        security = self.docs_headers if scope["path"] in self.docs_paths else self.api_headers
        request_id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", ()),
                    *security,
                    request_id_header,
                    *added_headers.items(),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            error_logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if response_started:  # too late for an error body; let the server drop the connection
                raise
            await _send_internal_error(send_with_headers, request_id)
        finally:
            log_access(
                request_id,
                scope["method"],
                scope["path"],
                status,
                round((time.perf_counter() - started) * 1000, 2),
            )
            request_id_var.reset(token)


async def _send_internal_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        error_body("internal_error", "Internal server error.", request_id=request_id)
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

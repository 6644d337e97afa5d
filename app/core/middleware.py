"""Pure-ASGI middleware for the request path.

`RequestContextMiddleware` does the per-request work in a single layer, because
each ASGI layer costs a call and a wrapped `send` on every request:

* request id: honours a sane incoming `X-Request-ID`, otherwise generates one, puts it
  in a context variable for logs and echoes it on every response, errors included;
* security headers on every response;
* one structured access-log line per request, and its Prometheus metrics (count,
  latency and in-flight by route template; `app.core.metrics`);
* the real client address and scheme behind trusted proxies (`TrustedProxies`);
* a request body limit, enforced while the body streams in, before anything parses it
  or authenticates the caller: a declared `Content-Length` over the limit is refused
  before a byte is read, and a chunked body as soon as it crosses the limit (413 in the
  standard shape). A route may allow more with FastAPI's own `max_body_size=` route
  parameter; one that must allow less checks its body itself (FastAPI's own limiter
  would answer first, outside the standard shape: see the webhook route);
* headers a dependency asked for with `set_response_header` (rate-limit headers, say),
  added to whatever response the request ends with, errors included;
* a last-resort 500 in the standard error shape for exceptions nothing else handled
  (the traceback is logged with the request id, never sent), with CORS headers for an
  allowed origin, so a browser shows its body and request id to the front-end.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.error_reporting import report_request_exception
from app.core.exceptions import error_body
from app.core.logging import log_access, request_id_var
from app.core.metrics import RequestMetrics
from app.core.proxies import TrustedProxies

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


class BodyTooLargeError(HTTPException):
    """The request body is over the limit (rendered as a 413 by the HTTP error handler)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes.")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _limited(receive: Receive, scope: Scope, default: int) -> Receive:
    """`receive`, refusing a body larger than the route's `max_body_size` or `default`.
    The route is known by the first read: routing happens before the body is parsed."""
    limit = -1
    received = 0

    async def receive_with_limit() -> Message:
        nonlocal limit, received
        if limit < 0:
            route_limit = getattr(scope.get("route"), "max_body_size", None)
            limit = default if route_limit is None else route_limit
            declared = _declared_length(scope)
            if declared is not None and declared > limit:
                raise BodyTooLargeError(limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLargeError(limit)
        return message

    return receive_with_limit


class RequestContextMiddleware:
    """Request id, client address, body limit, security headers, access log and
    last-resort error rendering."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hsts: bool = False,
        docs_paths: tuple[str, ...] = (),
        max_body_bytes: int = 1 << 20,
        trusted_proxies: TrustedProxies | None = None,
        cors_origins: tuple[str, ...] = (),
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.trusted_proxies = trusted_proxies
        self.cors_origins = frozenset(cors_origins)
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
        if self.trusted_proxies is not None:
            self.trusted_proxies.apply(scope)
        receive = _limited(receive, scope, self.max_body_bytes)  # any method may send a body
        # Shared by reference, so it survives layers that copy the scope dict.
        added_headers: dict[bytes, bytes] = {}
        scope[RESPONSE_HEADERS_KEY] = added_headers
        started = time.perf_counter()
        if self.metrics is not None:
            self.metrics.started()
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
        except Exception as exc:
            error_logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            report_request_exception(exc, scope)
            if response_started:  # too late for an error body; let the server drop the connection
                raise
            await _send_internal_error(send_with_headers, request_id, self._cors_headers(scope))
        finally:
            elapsed = time.perf_counter() - started
            log_access(request_id, scope["method"], scope["path"], status, round(elapsed * 1000, 2))
            if self.metrics is not None:
                self.metrics.finished(scope, status, elapsed)
            request_id_var.reset(token)

    def _cors_headers(self, scope: Scope) -> Headers:
        """What CORSMiddleware would have added for this request's origin, had the
        exception not bypassed it."""
        if not self.cors_origins:
            return ()
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is None:
            return ()
        expose = (b"access-control-expose-headers", b"X-Request-ID")
        if "*" in self.cors_origins:
            return ((b"access-control-allow-origin", b"*"), expose)
        if origin.decode("latin-1") not in self.cors_origins:
            return ()
        return (
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            expose,
            (b"vary", b"Origin"),
        )


async def _send_internal_error(send: Send, request_id: str, extra_headers: Headers) -> None:
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
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

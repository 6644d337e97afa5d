"""Rate limits: GCRA in Redis, keyed by principal or client IP, as a route dependency.

The algorithm is the generic cell rate algorithm: a limit of N per period P allows a
burst of N, then one request every P/N. Each key stores one timestamp (the
theoretical arrival time), updated by one atomic Lua script, so there is no window
edge to burst across: N requests at the end of one minute leave nothing for the
start of the next. Time comes from the app server (in milliseconds), which also lets
tests drive it.

`RateLimit("10/minute", scope="items:write")` (or `rate_limit(...)`, the same wrapped
in `Depends`) limits a route or, in a router's `dependencies`, every route of it.
Limited routes answer with `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset` on every response, and with a 429 plus `Retry-After` when the limit
is hit. When Redis is down the limiter fails open (allows, logs a throttled warning)
or, with `RATE_LIMIT_FAIL_OPEN=false`, closed (503).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from redis.asyncio import Redis
from starlette.types import Scope

from app.core import metrics
from app.core.cache import REDIS_ERRORS, RedisBreaker
from app.core.exceptions import RateLimitError, ServiceUnavailableError
from app.core.middleware import RESPONSE_HEADERS_KEY, set_response_header
from app.core.rates import Rate, parse_rate
from app.core.route_templates import route_template
from app.core.security import OptionalPrincipal

logger = logging.getLogger(__name__)
# The budget of refused tokens per client address (RATE_LIMIT_AUTH_FAILURES).
AUTH_FAILURES_SCOPE = "auth:failures"


# KEYS[1] bucket; ARGV: now (ms), emission interval (ms), period (ms).
# Returns {1, ms until the bucket is full again} or {0, ms until full, ms until allowed}.
_GCRA = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - period
if allow_at > now then
  return {0, string.format('%.3f', tat - now), string.format('%.3f', allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now))
return {1, string.format('%.3f', new_tat - now), '0'}
"""


class PrincipalLike(Protocol):
    """What the limiter needs from an authenticated caller."""

    @property
    def issuer(self) -> str: ...

    @property
    def subject(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float

    def headers(self) -> dict[bytes, bytes]:
        return {
            b"ratelimit-limit": str(self.limit).encode(),
            b"ratelimit-remaining": str(self.remaining).encode(),
            b"ratelimit-reset": str(math.ceil(self.reset_after)).encode(),
        }


class RateLimiter:
    """The limiter the lifespan builds: one Redis script and the client-address rules."""

    def __init__(
        self,
        redis: Redis | None,
        *,
        default: Rate,
        named: Mapping[str, Rate] | None = None,
        fail_open: bool = True,
        breaker: RedisBreaker | None = None,
        prefix: str = "ratelimit:",
    ) -> None:
        self.redis = redis
        self.default = default
        self.named = dict(named or {})
        self.fail_open = fail_open
        self.breaker = breaker or RedisBreaker.for_client(redis)
        self.prefix = prefix
        self._script = redis.register_script(_GCRA) if redis is not None else None

    async def hit(
        self, key: str, rate: Rate, *, now: float | None = None
    ) -> RateLimitResult | None:
        """Count one request against `key`; None when Redis could not answer."""
        script = self._script
        if script is None:
            return None
        now_ms = (time.time() if now is None else now) * 1000
        interval_ms = rate.period * 1000 / rate.count
        args = (f"{now_ms:.3f}", f"{interval_ms:.3f}", f"{rate.period * 1000:.3f}")
        keys = [self.prefix + key]
        try:
            allowed, full_in, retry_in = await self.breaker.call(
                lambda: script(keys=keys, args=args)
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        used_ms = float(full_in)
        if not int(allowed):
            return RateLimitResult(False, rate.count, 0, used_ms / 1000, float(retry_in) / 1000)
        remaining = int((rate.period * 1000 - used_ms) / interval_ms + 1e-6)
        return RateLimitResult(True, rate.count, max(0, remaining), used_ms / 1000, 0.0)

    def _failed(self, exc: BaseException) -> None:
        if self.breaker.warning_due("ratelimit"):
            action = "allowing requests" if self.fail_open else "refusing limited routes"
            logger.warning("rate limiter cannot reach Redis (%s); %s", type(exc).__name__, action)

    def client_ip(self, scope: Scope) -> str:
        """The caller's address (`TrustedProxies` already resolved it from proxy headers)."""
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    async def refuse_repeated_failures(self, scope: Scope) -> None:
        """Count a refused token against the client's address; past
        RATE_LIMIT_AUTH_FAILURES, raise `RateLimitError` (429) instead of another 401, so
        a flood of bad tokens is limited like any other traffic."""
        rate = self.named.get(AUTH_FAILURES_SCOPE)
        if rate is None:
            return
        result = await self.hit(f"{AUTH_FAILURES_SCOPE}:ip:{self.client_ip(scope)}", rate)
        if result is not None and not result.allowed:
            metrics.RATE_LIMITED.labels(AUTH_FAILURES_SCOPE).inc()
            raise _over_limit(rate, result)

    def identity(self, scope: Scope, principal: PrincipalLike | None) -> str:
        """Who a request counts against: the principal when authenticated, else the IP."""
        if principal is not None:
            # The issuer's length first: an issuer may contain ":" (it is a URL).
            return f"user:{len(principal.issuer)}:{principal.issuer}:{principal.subject}"
        return f"ip:{self.client_ip(scope)}"


def _over_limit(rate: Rate, result: RateLimitResult) -> RateLimitError:
    retry_after = str(max(1, math.ceil(result.retry_after)))
    return RateLimitError(
        f"Rate limit of {rate.count} per {rate.period:g}s exceeded; retry in {retry_after}s.",
        details={"limit": rate.count, "period_seconds": rate.period},
        headers={"Retry-After": retry_after},
    )


def _report(scope: Scope, result: RateLimitResult) -> None:
    """Set the RateLimit-* headers, keeping the tightest limit when several apply."""
    current = scope.get(RESPONSE_HEADERS_KEY, {}).get(b"ratelimit-remaining")
    if current is not None and int(current) <= result.remaining and result.allowed:
        return
    for name, value in result.headers().items():
        set_response_header(scope, name, value)


def _route_scope(request: Request) -> str:
    # The full template: two routers may both have a `/{item_id}` of their own.
    path = route_template(request.scope) or request.url.path
    return f"{request.method}:{path}"


class RateLimit:
    """A dependency limiting the routes it is attached to.

    `rate` is a string like `10/minute` (checked here, at import) or None: then the
    rate settings give for `scope` (`Settings.named_rate_limits`, e.g.
    RATE_LIMIT_ITEM_WRITES for `items:write`), else `RATE_LIMIT_DEFAULT`. Routes sharing
    a `scope` share one budget per caller; without one, each route (method and path
    template) has its own.
    """

    def __init__(self, rate: str | Rate | None = None, *, scope: str | None = None) -> None:
        self.rate = parse_rate(rate) if isinstance(rate, str) else rate
        self.scope = scope

    async def __call__(self, request: Request, principal: OptionalPrincipal) -> None:
        await self.check(request, principal)

    def key(self, request: Request, principal: PrincipalLike | None) -> str:
        """The bucket: this limit's scope (or the route) and the caller's identity."""
        limiter: RateLimiter = request.state.rate_limiter
        identity = limiter.identity(request.scope, principal)
        return f"{self.scope or _route_scope(request)}:{identity}"

    async def check(self, request: Request, principal: PrincipalLike | None) -> None:
        """Count the request; raise `RateLimitError` (429) over the limit."""
        limiter: RateLimiter = request.state.rate_limiter
        rate = self.rate or limiter.named.get(self.scope or "") or limiter.default
        result = await limiter.hit(self.key(request, principal), rate)
        if result is None:
            if limiter.redis is not None and not limiter.fail_open:
                raise ServiceUnavailableError(
                    "Rate limiting is unavailable; try again shortly.",
                    headers={"Retry-After": str(math.ceil(limiter.breaker.backoff))},
                )
            return
        _report(request.scope, result)
        if not result.allowed:
            metrics.RATE_LIMITED.labels(self.scope or _route_scope(request)).inc()
            raise _over_limit(rate, result)


def rate_limit(rate: str | Rate | None = None, *, scope: str | None = None) -> DependsParam:
    """`RateLimit(...)` wrapped in `Depends`, for `dependencies=[rate_limit("10/minute")]`."""
    dependency: DependsParam = Depends(RateLimit(rate, scope=scope))
    return dependency

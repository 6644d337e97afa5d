"""Rate limits: the GCRA core with a driven clock, then the dependency over HTTP."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from httpx import ASGITransport, AsyncClient

from app.core.cache import create_redis
from app.core.config import ConfigError, Settings, load_settings
from app.core.exceptions import NotFoundError
from app.core.ratelimit import RateLimit, RateLimiter, rate_limit
from app.core.rates import Rate, parse_rate
from app.main import create_app
from tests.support import CLOSED_PORT_URL, WithLifespanState, auth_headers, make_settings

SQLITE = "sqlite+aiosqlite:///:memory:"


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/minute", Rate(100, 60)),
        ("10/second", Rate(10, 1)),
        ("1000/hour", Rate(1000, 3600)),
        ("5/10seconds", Rate(5, 10)),
        ("20 / day", Rate(20, 86_400)),
        ("3/2min", Rate(3, 120)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "100", "100/fortnight", "0/minute", "5/0s", "1/ms", "x/s"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|at least 1"):
        parse_rate(text)


def test_a_bad_default_rate_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RATE_LIMIT_DEFAULT", "100/fortnight")
    with pytest.raises(ConfigError, match=r"RATE_LIMIT_DEFAULT.*not a rate"):
        load_settings(_env_file=None)


def test_failing_closed_without_redis_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="RATE_LIMIT_FAIL_OPEN=false needs REDIS_URL"):
        load_settings(_env_file=None, REDIS_URL="", RATE_LIMIT_FAIL_OPEN=False)


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RateLimiter]:
    redis = create_redis(make_settings(SQLITE, REDIS_URL=redis_url))
    assert redis is not None
    yield RateLimiter(redis, default=Rate(100, 60), prefix=f"test:rl:{uuid.uuid4().hex}:")
    await redis.aclose()


async def test_a_burst_of_the_limit_passes_then_the_next_request_waits(
    limiter: RateLimiter,
) -> None:
    rate, t = Rate(5, 60), 1_000_000.0
    results = [await limiter.hit("k", rate, now=t) for _ in range(6)]
    assert [r.allowed for r in results if r] == [True] * 5 + [False]
    assert [r.remaining for r in results if r] == [4, 3, 2, 1, 0, 0]
    denied = results[5]
    assert denied is not None
    assert denied.retry_after == pytest.approx(12.0)  # one request per 60/5 s
    assert denied.reset_after == pytest.approx(60.0)
    almost = await limiter.hit("k", rate, now=t + 11.9)
    assert almost is not None
    assert not almost.allowed
    later = await limiter.hit("k", rate, now=t + 12.0)
    assert later is not None
    assert later.allowed
    assert later.remaining == 0


async def test_no_double_burst_across_a_window_edge(limiter: RateLimiter) -> None:
    """A fixed one-minute window would let 5 through at 0:59.9 and 5 more at 1:00.1."""
    rate, minute = Rate(5, 60), 60_000_000.0
    end_of_window = [await limiter.hit("edge", rate, now=minute - 0.1) for _ in range(5)]
    assert all(r is not None and r.allowed for r in end_of_window)
    start_of_next = [await limiter.hit("edge", rate, now=minute + 0.1) for _ in range(5)]
    assert [r is not None and r.allowed for r in start_of_next] == [False] * 5
    refilled = [await limiter.hit("edge", rate, now=minute - 0.1 + 60) for _ in range(6)]
    assert [r is not None and r.allowed for r in refilled] == [True] * 5 + [False]


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    rate = Rate(1, 60)
    first = await limiter.hit("a", rate, now=5.0)
    second = await limiter.hit("b", rate, now=5.0)
    assert first is not None
    assert second is not None
    assert (first.allowed, second.allowed) == (True, True)


# --- over HTTP ---------------------------------------------------------------------------


def build_router(scope: str) -> APIRouter:
    router = APIRouter(prefix="/limited")

    @router.get("/three", dependencies=[rate_limit("3/minute", scope=f"{scope}:three")])
    async def three() -> dict[str, str]:
        """Three a minute."""
        return {"ok": "yes"}

    @router.get("/missing", dependencies=[rate_limit("3/minute", scope=f"{scope}:missing")])
    async def missing() -> None:
        """Limited, and always a 404."""
        raise NotFoundError("Nothing here.")

    @router.get("/default", dependencies=[Depends(RateLimit(scope=f"{scope}:default"))])
    async def default() -> dict[str, str]:
        """RATE_LIMIT_DEFAULT applies."""
        return {"ok": "yes"}

    @router.get(
        "/stacked",
        dependencies=[
            rate_limit("5/minute", scope=f"{scope}:loose"),
            rate_limit("2/minute", scope=f"{scope}:tight"),
        ],
    )
    async def stacked() -> dict[str, str]:
        """Two limits; the tighter one shows in the headers."""
        return {"ok": "yes"}

    @router.get("/free")
    async def free() -> dict[str, str]:
        """Not limited."""
        return {"ok": "yes"}

    return router


@asynccontextmanager
async def limited_client(settings: Settings, peer: str = "127.0.0.1") -> AsyncIterator[AsyncClient]:
    app: FastAPI = create_app(settings)
    app.include_router(build_router(uuid.uuid4().hex))
    async with app.router.lifespan_context(app) as state:
        transport = ASGITransport(app=WithLifespanState(app, dict(state or {})), client=(peer, 1))
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def rate_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    return make_settings(database_url, REDIS_URL=redis_url, **overrides)


def limit_headers(response: Any) -> tuple[str | None, ...]:
    return tuple(
        response.headers.get(name)
        for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
    )


async def test_headers_count_down_and_the_next_request_is_a_429_with_retry_after(
    database_url: str, redis_url: str
) -> None:
    async with limited_client(rate_settings(database_url, redis_url)) as client:
        responses = [await client.get("/limited/three") for _ in range(4)]
        free = await client.get("/limited/free")
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert {r.headers["ratelimit-limit"] for r in responses} == {"3"}
    assert all(0 < int(r.headers["ratelimit-reset"]) <= 60 for r in responses)
    limited = responses[3]
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    error = limited.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["request_id"] == limited.headers["x-request-id"]
    assert error["details"] == {"limit": 3, "period_seconds": 60.0}
    assert limit_headers(free) == (None, None, None)


async def test_error_responses_of_a_limited_route_carry_the_headers(
    database_url: str, redis_url: str
) -> None:
    async with limited_client(rate_settings(database_url, redis_url)) as client:
        response = await client.get("/limited/missing")
    assert response.status_code == 404
    assert limit_headers(response)[:2] == ("3", "2")


async def test_with_two_limits_the_tighter_one_is_reported_and_enforced(
    database_url: str, redis_url: str
) -> None:
    async with limited_client(rate_settings(database_url, redis_url)) as client:
        responses = [await client.get("/limited/stacked") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [limit_headers(r)[:2] for r in responses] == [("2", "1"), ("2", "0"), ("2", "0")]


async def test_the_default_rate_comes_from_settings(database_url: str, redis_url: str) -> None:
    settings = rate_settings(database_url, redis_url, RATE_LIMIT_DEFAULT="2/hour")
    async with limited_client(settings) as client:
        responses = [await client.get("/limited/default") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].headers["ratelimit-limit"] == "2"


async def test_principals_and_anonymous_callers_have_separate_budgets(
    database_url: str, redis_url: str
) -> None:
    settings = rate_settings(database_url, redis_url)
    as_alice, as_bob = auth_headers(settings, "alice"), auth_headers(settings, "bob")
    async with limited_client(settings) as client:
        alice = [await client.get("/limited/three", headers=as_alice) for _ in range(4)]
        bob = await client.get("/limited/three", headers=as_bob)
        anonymous = await client.get("/limited/three")
    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    assert (bob.status_code, bob.headers["ratelimit-remaining"]) == (200, "2")
    assert (anonymous.status_code, anonymous.headers["ratelimit-remaining"]) == (200, "2")


async def test_forwarded_for_separates_clients_only_behind_a_trusted_proxy(
    database_url: str, redis_url: str
) -> None:
    async def remaining_after_two_clients(settings: Settings) -> list[str]:
        async with limited_client(settings, peer="10.1.2.3") as client:
            first = await client.get("/limited/three", headers={"x-forwarded-for": "198.51.100.1"})
            second = await client.get("/limited/three", headers={"x-forwarded-for": "198.51.100.2"})
        return [first.headers["ratelimit-remaining"], second.headers["ratelimit-remaining"]]

    trusted = rate_settings(database_url, redis_url, TRUSTED_PROXIES="10.0.0.0/8, 192.168.0.1")
    untrusted = rate_settings(database_url, redis_url, TRUSTED_PROXIES="192.168.0.1")
    assert await remaining_after_two_clients(trusted) == ["2", "2"]
    assert await remaining_after_two_clients(untrusted) == ["2", "1"]


async def test_redis_down_fails_open_with_one_warning(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = rate_settings(database_url, f"redis://{CLOSED_PORT_URL}/0")
    with caplog.at_level(logging.WARNING, logger="app.core.ratelimit"):
        async with limited_client(settings) as client:
            responses = [await client.get("/limited/three") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert limit_headers(responses[0]) == (None, None, None)
    warnings = [r for r in caplog.records if r.name == "app.core.ratelimit"]
    assert len(warnings) == 1
    assert "allowing requests" in warnings[0].getMessage()


async def test_redis_down_fails_closed_when_configured(database_url: str) -> None:
    settings = rate_settings(
        database_url, f"redis://{CLOSED_PORT_URL}/0", RATE_LIMIT_FAIL_OPEN=False
    )
    async with limited_client(settings) as client:
        limited = await client.get("/limited/three")
        free = await client.get("/limited/free")
    assert limited.status_code == 503
    assert limited.json()["error"]["code"] == "service_unavailable"
    assert "retry-after" in limited.headers
    assert free.status_code == 200


async def test_without_redis_routes_are_not_limited(database_url: str) -> None:
    async with limited_client(make_settings(database_url)) as client:
        responses = [await client.get("/limited/three") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5


async def test_refused_tokens_are_limited_per_client_address(
    database_url: str, redis_url: str
) -> None:
    """A flood of bad tokens gets 429s once the address has used its failure budget;
    valid tokens from that address, and bad ones from another, are unaffected."""
    settings = rate_settings(
        database_url, redis_url, RATE_LIMIT_AUTH_FAILURES="3/minute", TRUSTED_PROXIES="10.0.0.1"
    )
    forger = {"x-forwarded-for": f"198.51.100.{uuid.uuid4().int % 200}"}
    bad_token = forger | {"authorization": "Bearer not.a.token"}
    async with limited_client(settings, peer="10.0.0.1") as client:
        refused = [(await client.get("/limited/default", headers=bad_token)) for _ in range(5)]
        valid = await client.get("/limited/default", headers=forger | auth_headers(settings, "ok"))
        neighbour = await client.get(
            "/limited/default",
            headers={"x-forwarded-for": "203.0.113.99", "authorization": "Bearer not.a.token"},
        )
    assert [r.status_code for r in refused] == [401, 401, 401, 429, 429]
    limited = refused[3].json()["error"]
    assert limited["code"] == "rate_limited"
    assert int(refused[3].headers["retry-after"]) >= 1
    assert valid.status_code == 200
    assert neighbour.status_code == 401

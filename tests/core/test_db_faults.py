"""PostgreSQL behind a proxy that refuses, answers "starting up" or stalls: every
request gets a 503 in the standard shape, within bounded time, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.faults import ProxyMode, TcpProxy, tcp_proxy
from tests.support import auth_headers, make_settings, running_app

ME = "/api/v1/users/me"
READY = "/api/v1/public/health/ready"
# Generous next to the timeouts below, far below the minute-long hangs they replace.
BOUND = 8.0


@pytest.fixture
def database_url(postgres_engine: AsyncEngine, postgres_url: str) -> str:
    """PostgreSQL whatever the suite's backend (emptied after each test)."""
    return postgres_url


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    url = make_url(database_url)
    async with tcp_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


def proxied_settings(database_url: str, proxy: TcpProxy, **overrides: Any) -> Any:
    url = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    values: dict[str, Any] = {
        "DB_CONNECT_TIMEOUT": 0.5,
        "DB_COMMAND_TIMEOUT": 0.5,
        "DB_POOL_TIMEOUT": 0.5,
        "HEALTH_CHECK_TIMEOUT": 0.5,
    }
    return make_settings(url.render_as_string(hide_password=False), **(values | overrides))


async def get_me(client: AsyncClient, settings: Any) -> tuple[Any, float]:
    started = time.monotonic()
    async with asyncio.timeout(BOUND):
        response = await client.get(ME, headers=auth_headers(settings, "fault-tester"))
    return response, time.monotonic() - started


def assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["request_id"] == response.headers["x-request-id"]
    assert "127.0.0.1" not in error["message"]


@pytest.mark.parametrize("mode", [ProxyMode.STARTING_UP, ProxyMode.REFUSE, ProxyMode.STALL])
async def test_no_connection_to_the_database_is_a_503(
    database_url: str, proxy: TcpProxy, mode: ProxyMode
) -> None:
    settings = proxied_settings(database_url, proxy)
    async with running_app(settings) as (_, client):
        proxy.mode = mode
        response, _ = await get_me(client, settings)
        assert_unavailable(response)
        proxy.mode = ProxyMode.FORWARD
        response, _ = await get_me(client, settings)
        assert response.status_code == 200, response.text


async def test_a_partition_mid_connection_is_a_503_not_a_hang(
    database_url: str, proxy: TcpProxy
) -> None:
    settings = proxied_settings(database_url, proxy)
    async with running_app(settings) as (_, client):
        assert (await get_me(client, settings))[0].status_code == 200  # pooled connections
        proxy.mode = ProxyMode.STALL  # open connections stop passing bytes, no reset
        response, _ = await get_me(client, settings)
        assert_unavailable(response)


async def test_an_exhausted_pool_is_a_503_after_the_pool_timeout(
    database_url: str, proxy: TcpProxy
) -> None:
    settings = proxied_settings(
        database_url, proxy, DB_POOL_SIZE=1, DB_MAX_OVERFLOW=0, DB_COMMAND_TIMEOUT=5
    )
    async with running_app(settings) as (_, client):
        engine: AsyncEngine = client._transport.app.state["engine"]  # type: ignore[attr-defined]
        async with engine.connect():  # holds the only connection
            response, _ = await get_me(client, settings)
        assert_unavailable(response)
        assert (await get_me(client, settings))[0].status_code == 200


async def test_readiness_answers_within_its_timeout_on_a_dead_socket(
    database_url: str, proxy: TcpProxy
) -> None:
    # The command timeout is long: only the readiness bound may end the wait.
    settings = proxied_settings(database_url, proxy, DB_COMMAND_TIMEOUT=30)
    async with running_app(settings) as (_, client):
        assert (await client.get(READY)).status_code == 200
        await asyncio.sleep(1.05)  # past the cached report
        proxy.mode = ProxyMode.STALL
        for _ in range(2):  # the second probe runs while the first check still unwinds
            started = time.monotonic()
            async with asyncio.timeout(BOUND):
                response = await client.get(READY)
            elapsed = time.monotonic() - started
            assert response.status_code == 503
            assert response.json()["components"]["database"]["status"] == "down"
            assert elapsed < settings.HEALTH_CHECK_TIMEOUT + 0.5
            await asyncio.sleep(1.05)

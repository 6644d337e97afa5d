import asyncio
from typing import Any

import pytest

from app.core.config import Settings
from app.core.health import ReadinessProbe, ReadinessReport
from tests.support import CLOSED_PORT_URL, hung_server, make_settings, running_app

LIVE = "/api/v1/public/health"
READY = "/api/v1/public/health/ready"
DOWN_DATABASE = f"postgresql+asyncpg://app@{CLOSED_PORT_URL}/app"


async def get_ready(settings: Settings) -> tuple[int, dict[str, Any], str]:
    async with running_app(settings) as (_, client):
        response = await client.get(READY)
    return response.status_code, response.json(), response.headers["cache-control"]


async def test_liveness_is_ok_with_the_version(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        response = await client.get(LIVE)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "0.1.0"}


async def test_liveness_needs_no_dependency() -> None:
    settings = make_settings(DOWN_DATABASE, REDIS_URL=f"redis://{CLOSED_PORT_URL}/0")
    async with running_app(settings) as (_, client):
        response = await client.get(LIVE)
    assert response.status_code == 200


async def test_ready_when_the_database_is_up_and_redis_disabled(settings: Settings) -> None:
    status, body, cache_control = await get_ready(settings)
    assert status == 200
    assert cache_control == "no-store"
    assert body["status"] == "ok"
    assert body["components"]["database"]["status"] == "up"
    assert body["components"]["database"]["latency_ms"] >= 0
    assert body["components"]["redis"]["status"] == "disabled"


async def test_ready_with_redis_up(database_url: str, clean_db: None, redis_url: str) -> None:
    status, body, _ = await get_ready(make_settings(database_url, REDIS_URL=redis_url))
    assert status == 200
    assert body["status"] == "ok"
    assert body["components"]["redis"]["status"] == "up"


async def test_redis_down_is_degraded_when_optional(database_url: str, clean_db: None) -> None:
    settings = make_settings(database_url, REDIS_URL=f"redis://{CLOSED_PORT_URL}/0")
    status, body, _ = await get_ready(settings)
    assert status == 200
    assert body["status"] == "degraded"
    assert body["components"]["redis"]["status"] == "down"
    assert body["components"]["redis"]["error"]
    assert body["components"]["database"]["status"] == "up"


async def test_redis_down_is_unavailable_when_required(database_url: str, clean_db: None) -> None:
    settings = make_settings(
        database_url, REDIS_URL=f"redis://{CLOSED_PORT_URL}/0", READINESS_REQUIRES_REDIS=True
    )
    status, body, _ = await get_ready(settings)
    assert status == 503
    assert body["status"] == "unavailable"


async def test_database_down_is_unavailable() -> None:
    status, body, _ = await get_ready(make_settings(DOWN_DATABASE))
    assert status == 503
    assert body["status"] == "unavailable"
    database = body["components"]["database"]
    assert database["status"] == "down"
    assert database["error"]
    assert "127.0.0.1" not in database["error"]  # no connection details leak


@pytest.mark.parametrize("component", ["database", "redis"])
async def test_a_hung_dependency_is_cut_off_at_the_timeout(
    database_url: str, clean_db: None, component: str
) -> None:
    async with hung_server() as address:
        overrides: dict[str, Any] = {"HEALTH_CHECK_TIMEOUT": 0.3, "READINESS_REQUIRES_REDIS": True}
        if component == "database":
            overrides["DATABASE_URL"] = f"postgresql+asyncpg://app@{address}/app"
        else:
            overrides["REDIS_URL"] = f"redis://{address}/0"
            overrides["REDIS_SOCKET_TIMEOUT"] = 30
        settings = make_settings(database_url, **overrides)
        async with asyncio.timeout(10), running_app(settings) as (_, client):
            response = await client.get(READY)
    assert response.status_code == 503
    assert response.json()["components"][component] == {
        "status": "down",
        "latency_ms": None,
        "error": "timed out after 0.3s",
    }


class CountingProbe(ReadinessProbe):
    runs = 0

    async def _run(self) -> ReadinessReport:
        self.runs += 1
        await asyncio.sleep(0.05)
        return await super()._run()


async def test_concurrent_probes_share_one_check(db_engine: Any) -> None:
    probe = CountingProbe(db_engine, None, timeout=1, requires_redis=False)
    reports = await asyncio.gather(*(probe.check() for _ in range(50)))
    assert probe.runs == 1
    assert {report.status for report in reports} == {"ok"}
    await probe.check()  # within the cache window: no new check
    assert probe.runs == 1

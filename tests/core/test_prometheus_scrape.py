"""A real Prometheus server (Debian's `prometheus` package) scrapes a running app: the
scrape succeeds, and PromQL over its API returns the requests the test made."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.core.test_metrics import scrape, value
from tests.support import free_port, make_settings, require_program, running_app

HEALTH = "/api/v1/public/health"


@asynccontextmanager
async def prometheus(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A Prometheus scraping `target` every second; yields its base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: api\n    static_configs:\n      - targets: ['{target}']\n"
    )
    address = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        require_program("prometheus", "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://{address}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                try:
                    if (await client.get(f"{url}/-/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def query(url: str, promql: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/api/v1/query", params={"query": promql})
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


async def eventually(url: str, promql: str, expected: float) -> float:
    """Poll the query until it returns `expected` (scrapes come every second)."""
    seen = float("nan")
    async with asyncio.timeout(30):
        while seen != expected:
            await asyncio.sleep(0.5)
            result = await query(url, promql)
            if result:
                seen = float(result[0]["value"][1])  # type: ignore[index]
    return seen


async def test_prometheus_scrapes_the_app_and_counts_its_requests(
    database_url: str, clean_db: None, tmp_path: Path
) -> None:
    metrics_port = free_port()
    settings = make_settings(database_url, METRICS_PORT=metrics_port, METRICS_HOST="127.0.0.1")
    async with running_app(settings) as (_, client):
        labels = {"method": "GET", "route": HEALTH, "status": "2xx"}
        before = value(await scrape(metrics_port), "http_requests_total", **labels)
        async with prometheus(tmp_path, f"127.0.0.1:{metrics_port}") as url:
            for _ in range(7):
                assert (await client.get(HEALTH)).status_code == 200
            selector = f'http_requests_total{{method="GET",route="{HEALTH}",status="2xx"}}'
            assert await eventually(url, f"sum({selector})", before + 7) == before + 7
            assert await eventually(url, 'up{job="api"}', 1) == 1
            info = await query(url, 'app_info{component="api"}')
            assert info
            assert info[0]["metric"]["environment"] == "test"  # type: ignore[index]

"""Prometheus metrics, scraped over HTTP from the metrics port as Prometheus would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app import __version__
from app.core.config import Settings
from tests.support import auth_headers, free_port, make_settings, running_app

ITEMS = "/api/v1/items"
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Scrape:
    """Every sample of a scrape, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: Scrape, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def settings(database_url: str, clean_db: None, metrics_port: int) -> Settings:
    return make_settings(database_url, METRICS_PORT=metrics_port, METRICS_HOST="127.0.0.1")


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[tuple[FastAPI, AsyncClient]]:
    async with running_app(settings) as pair:
        yield pair


async def test_requests_are_counted_by_method_route_template_and_status_class(
    app_client: tuple[FastAPI, AsyncClient], settings: Settings, metrics_port: int
) -> None:
    _, client = app_client
    headers = auth_headers(settings, f"m-{uuid.uuid4().hex[:8]}")
    before = await scrape(metrics_port)
    created = await client.post(ITEMS, json={"title": "counted"}, headers=headers)
    for _ in range(3):
        assert (await client.get(f"{ITEMS}/{created.json()['id']}", headers=headers)).is_success
    assert (await client.get(f"{ITEMS}/{uuid.uuid4()}", headers=headers)).status_code == 404
    for path in ("/wp-admin.php", "/.env", f"/{uuid.uuid4()}"):  # a scanner's paths
        assert (await client.get(path)).status_code == 404
    assert (await client.request("BREW", "/api/v1/public/health")).status_code == 405
    after = await scrape(metrics_port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    item = "/api/v1/items/{item_id}"
    assert delta("http_requests_total", method="GET", route=item, status="2xx") == 3
    assert delta("http_requests_total", method="GET", route=item, status="4xx") == 1
    assert delta("http_requests_total", method="POST", route=ITEMS, status="2xx") == 1
    assert delta("http_requests_total", method="GET", route="unmatched", status="4xx") == 3
    health = "/api/v1/public/health"
    assert delta("http_requests_total", method="OTHER", route=health, status="4xx") == 1
    assert delta("http_request_duration_seconds_count", method="GET", route=item) == 4
    assert not any("wp-admin" in dict(labels).get("route", "") for _, labels in after)
    assert value(after, "http_requests_in_flight") == 0
    info = {"version": __version__, "environment": "test", "component": "api"}
    assert value(after, "app_info", **info) == 1
    assert value(after, "db_pool_size") >= settings.DB_POOL_SIZE
    assert value(after, "db_pool_checked_out") == 0
    assert delta("db_pool_wait_seconds_count") >= 1


async def test_the_api_port_does_not_serve_metrics_and_the_metrics_port_nothing_else(
    app_client: tuple[FastAPI, AsyncClient], metrics_port: int
) -> None:
    _, client = app_client
    assert (await client.get("/metrics")).status_code == 404
    async with httpx.AsyncClient() as raw:
        assert (await raw.get(f"http://127.0.0.1:{metrics_port}/")).status_code == 404
        assert (await raw.get(f"http://127.0.0.1:{metrics_port}/api/v1/items")).status_code == 404


async def test_rejected_tokens_are_counted_by_reason(
    app_client: tuple[FastAPI, AsyncClient], settings: Settings, metrics_port: int
) -> None:
    _, client = app_client
    before = await scrape(metrics_port)
    now = int(time.time())
    expired = auth_headers(settings, "late", exp=now - 3600, iat=now - 7200)
    assert (await client.get("/api/v1/users/me", headers=expired)).status_code == 401
    garbage = {"Authorization": "Bearer not.a.token"}
    assert (await client.get("/api/v1/users/me", headers=garbage)).status_code == 401
    after = await scrape(metrics_port)
    for reason in ("expired", "malformed token"):
        assert (
            value(after, "auth_tokens_rejected_total", reason=reason)
            - value(before, "auth_tokens_rejected_total", reason=reason)
            == 1
        ), reason


async def test_metrics_off_serves_nothing_and_costs_no_middleware(
    database_url: str, clean_db: None
) -> None:
    port = free_port()
    settings = make_settings(database_url, METRICS_PORT=0)
    labels = {"method": "GET", "route": "/api/v1/public/health", "status": "2xx"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    async with running_app(settings) as (_, client):
        assert (await client.get("/api/v1/public/health")).status_code == 200
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as raw:
                await raw.get(f"http://127.0.0.1:{port}/metrics")
    after = REGISTRY.get_sample_value("http_requests_total", labels) or 0
    assert after == before


async def test_a_request_being_served_is_in_flight(
    app_client: tuple[FastAPI, AsyncClient], metrics_port: int
) -> None:
    app, client = app_client
    entered, release = asyncio.Event(), asyncio.Event()

    @app.get("/test-slow")
    async def slow() -> dict[str, bool]:
        entered.set()
        await release.wait()
        return {"ok": True}

    pending = asyncio.create_task(client.get("/test-slow"))
    await entered.wait()
    during = value(await scrape(metrics_port), "http_requests_in_flight")
    release.set()
    assert (await pending).status_code == 200
    assert during == 1
    assert value(await scrape(metrics_port), "http_requests_in_flight") == 0

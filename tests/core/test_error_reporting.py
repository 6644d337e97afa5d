"""Sentry reporting, read back from a local endpoint that stands in for Sentry: what an
unhandled request or job error sends, what it never sends, and what is not reported."""

from __future__ import annotations

import gzip
import json
import sys
import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sentry_sdk
from fastapi import APIRouter, FastAPI, Request
from httpx import AsyncClient
from pydantic import BaseModel
from sqlalchemy import text

from app import __version__
from app.core.cache import create_redis
from app.core.config import ConfigError, Settings
from app.core.db import SessionDep
from app.core.error_reporting import init_error_reporting, report_exception, scrub_event
from app.core.exceptions import NotFoundError, ServiceUnavailableError
from app.core.security import CurrentPrincipal
from app.jobs.queue import JobQueue
from app.jobs.registry import JobContext, job
from app.main import create_app
from tests.deploy.parsing import project_slug
from tests.jobs.conftest import job_settings, run_worker
from tests.support import auth_headers, local_token, make_settings, running_app

BODY_TEXT = "body-text-do-not-send"
COOKIE_VALUE = "cookie-value-do-not-send"
DB_PASSWORD = "db-password-do-not-send"

router = APIRouter(prefix="/boom")


class Note(BaseModel):
    text: str


@router.post("/items/{item_id}")
async def crash(item_id: int, note: Note, principal: CurrentPrincipal, request: Request) -> None:
    credentials = request.headers["authorization"]
    raise RuntimeError(f"postgresql://app:{DB_PASSWORD}@db/app refused {credentials}")


@router.get("/missing")
async def missing() -> None:
    raise NotFoundError


@router.get("/unavailable")
async def unavailable() -> None:
    raise ServiceUnavailableError


@router.get("/bad-sql")
async def bad_sql(session: SessionDep) -> None:
    await (await session.connection()).execute(text("SELECT * FROM no_such_table"))


@job(name="test_error_reporting_fails", max_tries=2)
async def fails(ctx: JobContext) -> None:
    raise ValueError("the export went wrong")


class SentryStub:
    """An HTTP server taking Sentry envelopes (`POST /api/<project>/envelope/`)."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                else:
                    assert not encoding, f"unexpected Content-Encoding {encoding}"
                assert self.path.endswith("/envelope/"), self.path
                stub.envelopes.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events received so far (after sending whatever is queued)."""
        sentry_sdk.flush(timeout=5)
        return [
            json.loads(payload)
            for envelope in self.envelopes
            for header, payload in envelope_items(envelope)
            if header.get("type") == "event"
        ]

    def raw(self) -> str:
        sentry_sdk.flush(timeout=5)
        return b"\n".join(self.envelopes).decode()


def envelope_items(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(item header, payload) pairs: a header line, then items of a header line and a
    payload of `length` bytes, or up to the next newline without one."""
    _, _, rest = envelope.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


@pytest.fixture
def sentry() -> Iterator[SentryStub]:
    stub = SentryStub()
    thread = threading.Thread(target=stub.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        # The client is process-global: leave none behind for the other tests.
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)
        stub.server.shutdown()
        stub.server.server_close()


@pytest.fixture
def settings(database_url: str, clean_db: None, sentry: SentryStub) -> Settings:
    return make_settings(database_url, SENTRY_DSN=sentry.dsn)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app: FastAPI = create_app(settings)
    app.include_router(router)
    async with running_app(settings, app) as (_, client):
        yield client


async def test_an_unhandled_request_error_is_reported_with_its_tags(
    settings: Settings, client: AsyncClient, sentry: SentryStub
) -> None:
    token = local_token(settings, "user-42")
    response = await client.post(
        "/boom/items/7",
        json={"text": BODY_TEXT},
        headers={"Authorization": f"Bearer {token}", "Cookie": f"session={COOKIE_VALUE}"},
    )
    assert response.status_code == 500

    [event] = sentry.events()
    [exception] = event["exception"]["values"]
    assert exception["type"] == "RuntimeError"
    assert "[Filtered]" in exception["value"]
    assert event["tags"] == {
        "component": "api",
        "request_id": response.headers["x-request-id"],
        "route": "/boom/items/{item_id}",
        "user_id": "user-42",
        "method": "POST",
    }
    assert event["user"] == {"id": "user-42"}
    assert event["environment"] == "test"
    assert event["release"] == f"{project_slug()}@{__version__}"
    sent = sentry.raw()
    for secret in (token, token.split(".")[1], COOKIE_VALUE, BODY_TEXT, DB_PASSWORD):
        assert secret not in sent


async def test_a_database_error_that_is_not_an_outage_is_reported(
    client: AsyncClient, sentry: SentryStub
) -> None:
    response = await client.get("/boom/bad-sql")
    assert response.status_code == 500
    [event] = sentry.events()
    assert event["tags"]["route"] == "/boom/bad-sql"
    assert "user_id" not in event["tags"]


async def test_answers_are_not_reported(
    settings: Settings, client: AsyncClient, sentry: SentryStub
) -> None:
    responses = [
        await client.get("/no/such/route"),
        await client.get("/boom/missing"),
        await client.get("/boom/unavailable"),
        await client.post("/boom/items/7", json={"text": "x"}),
        await client.post("/boom/items/7", json={}, headers=auth_headers(settings)),
        await client.post("/boom/items/x", json={"text": "x"}, headers=auth_headers(settings)),
    ]
    assert [r.status_code for r in responses] == [404, 404, 503, 401, 422, 422]
    assert sentry.events() == []


async def test_the_scrubber_removes_credentials_wherever_they_are(sentry: SentryStub) -> None:
    settings = make_settings("sqlite+aiosqlite://", SENTRY_DSN=sentry.dsn)
    assert init_error_reporting(settings, component="api")
    token = local_token(settings, "user-42")
    leaky = {
        "url": f"https://api.example.com/items?access_token={token}&page=2",
        "method": "GET",
        "query_string": "api_key=k-do-not-send&page=2",
        "headers": {
            "Authorization": f"Bearer {token}",
            "Cookie": f"session={COOKIE_VALUE}",
            "X-Api-Key": "k-do-not-send",
            "Accept": "application/json",
        },
        "cookies": {"session": COOKIE_VALUE},
        "data": {"text": BODY_TEXT},
    }

    def add_leaks(event: Any, hint: Any) -> Any:
        event["request"] = leaky
        event["breadcrumbs"] = {"values": [{"message": f"called with {token}"}]}
        return event

    with sentry_sdk.new_scope() as scope:
        scope.add_event_processor(add_leaks)
        scope.set_extra("dsn", f"https://user:{DB_PASSWORD}@db.example.com/1")
        scope.set_context("auth", {"refresh_token": "r-do-not-send", "note": token})
        report_exception(RuntimeError("boom"), request_id="r1")

    [event] = sentry.events()
    request = event["request"]
    assert request["headers"]["Accept"] == "application/json"
    assert request["url"] == "https://api.example.com/items?access_token=[Filtered]&page=2"
    assert request["query_string"] == "api_key=[Filtered]&page=2"
    assert "data" not in request
    assert "cookies" not in request
    sent = sentry.raw()
    for secret in (token, COOKIE_VALUE, BODY_TEXT, DB_PASSWORD, "k-do-not-send", "r-do-not-send"):
        assert secret not in sent


def test_scrub_event_leaves_ordinary_values_alone() -> None:
    event: Any = {
        "tags": {"route": "/api/v1/items/{item_id}", "request_id": "abc"},
        "exception": {"values": [{"module": "starlette.middleware.exceptions", "value": "1.2.3"}]},
        "extra": {"pair": ["page", "2"], "lines": ["api_key = read()", "x"]},
    }
    assert scrub_event(json.loads(json.dumps(event)), {}) == event


async def test_a_failing_job_is_reported_on_each_try(
    database_url: str, redis_url: str, clean_db: None, sentry: SentryStub
) -> None:
    settings = job_settings(database_url, redis_url, SENTRY_DSN=sentry.dsn)
    redis = create_redis(settings)
    assert redis is not None
    job_id = await JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME).enqueue(fails)
    await redis.aclose()
    await run_worker(settings, [fails])

    events = sentry.events()
    assert [event["level"] for event in events] == ["warning", "error"]
    for number, event in enumerate(events, start=1):
        assert event["exception"]["values"][0]["type"] == "ValueError"
        assert event["tags"] == {
            "component": "worker",
            "job_function": "test_error_reporting_fails",
            "job_id": job_id,
            "job_try": str(number),
        }


async def test_without_a_dsn_nothing_is_initialised(database_url: str) -> None:
    settings = make_settings(database_url)
    assert init_error_reporting(settings, component="api") is False
    create_app(settings)
    assert not sentry_sdk.get_client().is_active()


def test_a_dsn_without_the_extra_names_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # what `import` sees when absent
    settings = make_settings(database_url, SENTRY_DSN=f"http://public@127.0.0.1:9/{uuid.uuid4()}")
    with pytest.raises(ConfigError, match="observability"):
        init_error_reporting(settings, component="api")

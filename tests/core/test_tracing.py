"""Tracing: one trace from a request through its SQL and Redis calls to the job it
enqueued, exported in memory and over OTLP/HTTP; off (and free) without OTEL_* set."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core import logging as app_logging
from app.core import tracing
from app.core.config import ConfigError, Settings
from app.core.db import create_session_factory, session_context
from app.core.logging import JsonFormatter
from app.jobs.exports import export_items
from app.jobs.outbox import outbox_row
from app.jobs.queue import META_KWARG, JobQueue
from app.jobs.registry import JobContext, job
from app.main import create_app
from tests.jobs.conftest import job_settings, relay_now, run_worker
from tests.support import ROOT, auth_headers, make_settings, running_app

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "FASTAPI_OTEL_AUTO_CONFIGURE",
)
SQL_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@pytest.fixture(autouse=True)
def tracing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variables, and the process-wide switches restored after each test."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(tracing, "_active", False)
    monkeypatch.setattr(app_logging, "_trace_ids", False)


@pytest.fixture
def job_env(database_url: str, redis_url: str, clean_db: None, tmp_path: Path) -> Settings:
    return job_settings(
        database_url,
        redis_url,
        EXPORT_DIR=str(tmp_path / "exports"),
        RATE_LIMIT_EXPORTS="10000/minute",
    )


@pytest.fixture
def in_memory(job_env: Settings) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = tracing.configure_tracing(job_env, component="api", exporter=exporter)
    assert provider is not None
    yield provider, exporter
    provider.shutdown()


def finished(provider: TracerProvider, exporter: InMemorySpanExporter) -> Sequence[ReadableSpan]:
    assert provider.force_flush()
    return exporter.get_finished_spans()


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    named = [span for span in spans if span.name == name]
    assert len(named) == 1, [span.name for span in spans]
    return named[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan, scope: str) -> list[str]:
    """The names of `parent`'s direct children recorded by instrumentation `scope`."""
    assert parent.context is not None
    return [
        span.name
        for span in spans
        if span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.instrumentation_scope is not None
        and span.instrumentation_scope.name == scope
    ]


async def test_one_trace_runs_from_the_request_through_sql_to_the_job(
    job_env: Settings,
    in_memory: tuple[TracerProvider, InMemorySpanExporter],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = in_memory
    headers = auth_headers(job_env, f"tracer-{uuid.uuid4().hex[:8]}", tenant="acme")
    app = create_app(job_env, tracer_provider=provider)
    async with running_app(job_env, app) as (_, client):
        with caplog.at_level(logging.INFO):
            response = await client.post("/api/v1/items/exports", json={}, headers=headers)
        assert response.status_code == 202, response.text
    await run_worker(
        job_env, [export_items], ctx={"settings": job_env, "tracer_provider": provider}
    )
    spans = finished(provider, exporter)

    request = one(spans, "POST /api/v1/items/exports")  # the route template, not the path
    assert request.kind is SpanKind.SERVER
    assert request.parent is None
    assert request.attributes is not None
    assert request.attributes["http.route"] == "/api/v1/items/exports"
    assert request.attributes["http.response.status_code"] == 202
    assert request.context is not None
    trace_id = request.context.trace_id
    # The outbox row is written under the request span; rate limit and send go to Redis.
    request_sql = children(spans, request, SQL_SCOPE)
    assert any(name.startswith("INSERT") for name in request_sql), request_sql
    assert children(spans, request, REDIS_SCOPE)

    job_span = one(spans, "job export_items")
    assert job_span.kind is SpanKind.CONSUMER
    assert job_span.context is not None
    assert job_span.context.trace_id == trace_id
    assert job_span.parent is not None
    assert job_span.parent.span_id == request.context.span_id
    assert job_span.attributes is not None
    assert job_span.attributes["messaging.message.id"] == response.json()["job_id"]
    assert any(name.startswith("SELECT") for name in children(spans, job_span, SQL_SCOPE))

    queued = [r for r in caplog.records if r.name == "app.jobs.queue" and "queued" in r.msg]
    assert queued, "the request logged the job it queued"
    line = json.loads(JsonFormatter().format(queued[0]))
    assert line["trace_id"] == format(trace_id, "032x")
    assert int(line["span_id"], 16) == request.context.span_id
    assert line["request_id"] == response.headers["x-request-id"]
    access = next(r for r in caplog.records if r.name == "app.access")
    assert access.__dict__["trace_id"] == format(trace_id, "032x")


@job(name="traced_probe")
async def traced_probe(ctx: JobContext) -> None:
    logging.getLogger("tests.traced_probe").info("probe ran")


async def test_a_job_relayed_from_the_outbox_still_joins_the_trace_that_enqueued_it(
    job_env: Settings,
    in_memory: tuple[TracerProvider, InMemorySpanExporter],
    db_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = in_memory
    queue = JobQueue.over(Redis.from_url(job_env.REDIS_URL), queue_name=job_env.JOBS_QUEUE_NAME)
    with provider.get_tracer("test").start_as_current_span("enqueue") as enqueuing:
        prepared = queue.prepare(traced_probe, (), {})
    await queue.redis.aclose()
    assert "traceparent" in prepared.kwargs[META_KWARG]["trace"]
    async with session_context(create_session_factory(db_engine)) as session:
        session.add(outbox_row(prepared))  # Redis "was down": only the outbox has the job
    assert await relay_now(job_env, db_engine) == 1
    with caplog.at_level(logging.INFO):
        await run_worker(
            job_env, [traced_probe], ctx={"settings": job_env, "tracer_provider": provider}
        )

    job_span = one(finished(provider, exporter), "job traced_probe")
    context = enqueuing.get_span_context()
    assert job_span.parent is not None
    assert job_span.parent.span_id == context.span_id
    assert job_span.context is not None
    assert job_span.context.trace_id == context.trace_id
    ran = next(r for r in caplog.records if r.name == "tests.traced_probe")
    assert ran.__dict__["trace_id"] == format(context.trace_id, "032x")
    assert int(ran.__dict__["span_id"], 16) == job_span.context.span_id


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver: keeps every span posted to /v1/traces."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.received.append(ExportTraceServiceRequest.FromString(body))
            status, payload = 200, ExportTraceServiceResponse().SerializeToString()
        else:
            status, payload = 404, b""
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


async def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_set(
    settings: Settings,
    collector: tuple[str, list[ExportTraceServiceRequest]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tracing-test")
    async with running_app(settings) as (_, client):  # the app builds and owns its provider
        response = await client.get("/api/v1/items", headers=auth_headers(settings))
        assert response.status_code == 200
    # The lifespan's exit shut the provider down, which flushed its spans.
    spans = {
        span.name: (resource.resource, span)
        for request in received
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    }
    resource, request = spans["GET /api/v1/items"]
    attributes = {item.key: item.value.string_value for item in resource.attributes}
    assert attributes["service.name"] == "tracing-test"
    assert attributes["deployment.environment.name"] == "test"
    statements = [s for _, s in spans.values() if s.parent_span_id == request.span_id]
    assert statements
    assert all(s.trace_id == request.trace_id for s in statements)


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"OTEL_SERVICE_NAME": "api"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"},
    ],
)
def test_tracing_is_off_unless_an_otlp_endpoint_is_configured(
    environment: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert tracing.configure_tracing(settings, component="api") is None
    assert tracing.trace_carrier() is None
    app = create_app(settings)
    # FastAPI's per-request check short-circuits on the first flag: no span, no metric.
    assert app._native_telemetry.enabled() is False


def test_with_tracing_off_no_opentelemetry_sdk_is_imported() -> None:
    code = (
        "import sys\n"
        "from app.main import create_app\n"
        "from tests.support import make_settings\n"
        "create_app(make_settings('sqlite+aiosqlite:///:memory:'))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.exporter', 'opentelemetry.instrumentation'))))\n"
    )
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "[]"


def test_a_configured_endpoint_without_the_sdk_names_the_extra(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    with pytest.raises(ConfigError, match="`observability` extra"):
        tracing.configure_tracing(settings, component="api")


def test_an_otlp_protocol_other_than_http_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        tracing.configure_tracing(settings, component="api")


def test_the_service_is_named_after_the_project_and_component_unless_configured(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(database_url, PROJECT_NAME="Acme Shop")
    exporter = InMemorySpanExporter()
    worker = tracing.configure_tracing(settings, component="worker", exporter=exporter)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=canary")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
    named = tracing.configure_tracing(settings, component="api", exporter=exporter)
    assert worker is not None
    assert named is not None
    try:
        assert worker.resource.attributes["service.name"] == "acme-shop-worker"
        assert worker.resource.attributes["deployment.environment.name"] == "test"
        assert named.resource.attributes["service.name"] == "billing"
        assert named.resource.attributes["deployment.environment.name"] == "canary"
    finally:
        worker.shutdown()
        named.shutdown()

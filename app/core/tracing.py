"""Tracing with OpenTelemetry: optional (the `observability` extra), off unless the
standard `OTEL_*` variables ask for it.

`configure_tracing` returns a `TracerProvider` exporting over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and
`OTEL_SDK_DISABLED` is not true, and None otherwise. The SDK reads every other
standard variable itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, ...), which is
why these are read from the process environment and are not Settings.

Request spans come from FastAPI's native telemetry (`fastapi_telemetry`), named after
the route template; SQL statements, Redis commands and the JWKS fetcher's HTTP calls
are traced per engine and per client (nothing is patched globally), with the provider
passed explicitly, never set as the global one. A job carries the trace context of the
request that enqueued it (`trace_carrier`), and the worker runs it in a `job <name>`
span joined to that trace (`job_span`).

With tracing off nothing here runs per request and the SDK is never imported: FastAPI
gets a configuration whose per-request check is a single false dict lookup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from app import __version__
from app.core.config import ConfigError, Settings
from app.core.logging import include_trace_ids

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    import httpx
    from fastapi.telemetry import TelemetryConfig
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

TRACER_NAME = "app"
# Set by configure_tracing: only then do jobs carry a trace context.
_active = False


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def tracing_requested() -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    if _env_true("OTEL_SDK_DISABLED"):
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def _check_protocol() -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = os.environ.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(f"{name}={protocol}: only http/protobuf (OTLP/HTTP) is supported")
            return


def configure_tracing(
    settings: Settings, *, component: str, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """A provider exporting this process's spans, or None when tracing is off.

    `component` (`api` or `worker`) completes the default service name. `exporter`
    replaces the OTLP exporter and turns tracing on whatever the environment says
    (tests pass an in-memory one). The caller owns the provider: `shutdown()` flushes it.
    """
    global _active
    if exporter is None:
        if not tracing_requested():
            return None
        _check_protocol()
    try:
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_* variables
    except ImportError as exc:
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
            "install the `observability` extra (uv sync --extra observability) or unset it"
        ) from exc
    defaults: dict[str, str] = {
        "service.name": f"{settings.project_slug}-{component}",
        "service.version": __version__,
        "deployment.environment.name": settings.ENVIRONMENT.value,
    }
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these defaults.
    detected = OTELResourceDetector().detect().attributes
    resource = Resource.create({k: v for k, v in defaults.items() if k not in detected})
    # No sampler argument: the SDK reads OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _active = True
    include_trace_ids()
    return provider


def fastapi_telemetry(provider: TracerProvider | None) -> TelemetryConfig:
    """`FastAPI(telemetry=...)`: request spans through `provider`, or nothing at all.

    Metrics stay with Prometheus (`metrics.py`) and errors with logging and Sentry, so
    FastAPI's own metrics and log records are off; so are its per-operation spans
    (dependencies, endpoint, serialization): SQL, Redis and HTTP spans hang directly
    under the request span. Environment auto-configuration is off: this module is the
    one place that reads the OTEL_* variables.
    """
    if provider is None:
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {
        "tracer_provider": provider,
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "auto_configure": False,
    }


def instrument_engine(engine: AsyncEngine, provider: TracerProvider) -> None:
    """A span per SQL statement run through `engine`."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpMeterProvider

    # The engine's own tracer, not SQLAlchemyInstrumentor: the instrumentor patches
    # create_engine and Engine.connect process-wide, once, for the first provider only.
    # Its pool-usage metric is dropped (the pool metrics live in metrics.py).
    unused = NoOpMeterProvider().get_meter(TRACER_NAME).create_up_down_counter("unused")
    tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__)
    EngineTracer(tracer, engine.sync_engine, unused)  # type: ignore[no-untyped-call]


def instrument_redis(client: Redis | None, provider: TracerProvider) -> None:
    """A span per command (or pipeline) sent through this client only."""
    if client is None:
        return
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor.instrument_client(client, tracer_provider=provider)


def instrument_httpx(client: httpx.AsyncClient, provider: TracerProvider) -> None:
    """A span per request sent through this client only (the JWKS fetcher's)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)


def trace_carrier() -> dict[str, str] | None:
    """The current trace context as headers (W3C `traceparent`, ...), for a job's
    metadata; None when tracing is off or no span is active."""
    if not _active:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


def job_tracer(provider: TracerProvider) -> Tracer:
    return provider.get_tracer("app.jobs", __version__)


def job_span(
    tracer: Tracer, function: str, carrier: object, attributes: Mapping[str, Any]
) -> AbstractContextManager[Span]:
    """The CONSUMER span a job runs in, `job <function>`, child of the span that
    enqueued it (`carrier`, from `trace_carrier`) or a new trace's root."""
    headers = carrier if isinstance(carrier, dict) else {}
    parent = propagate.extract(headers, context=Context())
    return tracer.start_as_current_span(
        f"job {function}", context=parent, kind=SpanKind.CONSUMER, attributes=dict(attributes)
    )

"""Application factory: `create_app(settings)` wires config, database, cache, auth,
job queue, rate limiter, errors, middleware and routers; `app` is the instance uvicorn
serves."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, TypedDict

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.api import openapi, well_known
from app.api.responses import check_routes
from app.api.v1.router import ROUTERS
from app.core import metrics, tracing
from app.core.accounts import AccountStatusCache
from app.core.auth_providers import ProviderConfig, provider_config
from app.core.cache import REDIS_ERRORS, Cache, RedisBreaker, create_redis
from app.core.config import Settings, get_settings
from app.core.db import (
    SessionFactory,
    create_engine,
    create_read_session_factory,
    create_session_factory,
    read_engine,
)
from app.core.error_reporting import init_error_reporting
from app.core.exceptions import register_exception_handlers
from app.core.health import ReadinessProbe
from app.core.logging import setup_logging
from app.core.middleware import RequestContextMiddleware
from app.core.pagination import CursorCodec
from app.core.proxies import TrustedProxies
from app.core.ratelimit import RateLimiter
from app.core.security import TokenVerifier
from app.integrations.ai import LanguageModel, create_model, require_ai_extra
from app.integrations.email import require_email_extra
from app.integrations.payments import require_payments_extra
from app.integrations.storage import (
    Storage,
    check_at_startup,
    create_storage,
    require_storage_extra,
)
from app.jobs.queue import JobQueue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)


class AppState(TypedDict):
    """What the lifespan opens; each request sees it as `request.state`."""

    engine: AsyncEngine
    session_factory: SessionFactory
    read_session_factory: SessionFactory
    read_engine: AsyncEngine
    redis: Redis | None
    cache: Cache
    readiness: ReadinessProbe
    jobs: JobQueue | None
    rate_limiter: RateLimiter
    verifier: TokenVerifier
    accounts: AccountStatusCache
    cursor_codec: CursorCodec
    storage: Storage
    ai_model: LanguageModel | None


# Garbage-collector generation 0 threshold while serving (CPython's default is 700):
# nearly everything a request allocates is freed by reference counting, and a
# collection every 700 allocations costs more than the few cycles it finds.
GC_GEN0_THRESHOLD = 10_000
_gc_settled = False


def _settle_garbage_collector() -> None:
    """Move everything start-up built (modules, models, SQLAlchemy and pydantic
    metadata), which lives as long as the process, out of the collector's sight: a
    full collection then scans only what requests created, instead of stalling every
    request in flight for tens of milliseconds. Then collect less often. Once per
    process: the collector is the process's, and a process serves one app (a test run
    that builds many would otherwise keep every one of them frozen)."""
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _check_redis(redis: Redis | None, timeout: float) -> None:
    if redis is None:
        logger.info("REDIS_URL is empty: caching, background jobs and rate limits disabled")
        return
    try:
        async with asyncio.timeout(timeout):
            await redis.ping()
    except (*REDIS_ERRORS, TimeoutError) as exc:
        logger.warning(
            "Redis is unreachable at start-up (%s); continuing without it", type(exc).__name__
        )


def _lifespan(
    settings: Settings,
    auth: ProviderConfig,
    tracer_provider: TracerProvider | None,
    owns_tracer_provider: bool,
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        # Each resource is closed (in reverse order) only if it was opened, even when
        # start-up fails halfway.
        async with AsyncExitStack() as resources:
            if tracer_provider is not None and owns_tracer_provider:
                # Closed last: spans of the shutdown itself are flushed too.
                resources.push_async_callback(asyncio.to_thread, tracer_provider.shutdown)
            engine = create_engine(settings)
            resources.push_async_callback(engine.dispose)
            redis = create_redis(settings)
            if redis is not None:
                resources.push_async_callback(redis.aclose)
            verifier = TokenVerifier.from_settings(settings, auth, tracer_provider=tracer_provider)
            resources.push_async_callback(verifier.aclose)
            verifier.start()  # the first JWKS fetch runs in the background
            await _check_redis(redis, settings.HEALTH_CHECK_TIMEOUT)
            storage = await create_storage(settings)
            resources.push_async_callback(storage.aclose)
            await check_at_startup(storage, settings.HEALTH_CHECK_TIMEOUT)
            ai_model = create_model(settings)
            if ai_model is not None:
                resources.push_async_callback(ai_model.aclose)
            # One breaker for every Redis user: a failure seen by one skips Redis for all.
            breaker = RedisBreaker(settings.REDIS_SOCKET_TIMEOUT)
            jobs = (
                JobQueue.over(redis, queue_name=settings.JOBS_QUEUE_NAME, breaker=breaker)
                if redis
                else None
            )
            if tracer_provider is not None:
                tracing.instrument_engine(engine, tracer_provider)
                tracing.instrument_redis(redis, tracer_provider)
                tracing.instrument_redis(jobs.redis if jobs else None, tracer_provider)
            if settings.METRICS_PORT:
                resources.callback(metrics.watch_pool(engine.sync_engine, settings.DB_POOL_SIZE))
                server = await metrics.start_metrics_server(
                    settings,
                    settings.METRICS_PORT,
                    jobs,
                    component="api",
                    requests=app.state.request_metrics,
                )
                resources.push_async_callback(server.aclose)
                resources.callback(metrics.mark_process_dead)
            _settle_garbage_collector()
            yield AppState(
                engine=engine,
                session_factory=create_session_factory(engine),
                read_session_factory=create_read_session_factory(engine),
                read_engine=read_engine(engine),
                redis=redis,
                cache=Cache(redis, breaker=breaker),
                readiness=ReadinessProbe(
                    engine,
                    redis,
                    timeout=settings.HEALTH_CHECK_TIMEOUT,
                    requires_redis=settings.READINESS_REQUIRES_REDIS,
                    # A directory is checked by the routes that use it; a remote
                    # service is part of readiness.
                    storage=storage.check if storage.name != "filesystem" else None,
                ),
                jobs=jobs,
                rate_limiter=RateLimiter(
                    redis,
                    default=settings.rate_limit_default,
                    named=settings.named_rate_limits,
                    fail_open=settings.RATE_LIMIT_FAIL_OPEN,
                    breaker=breaker,
                ),
                verifier=verifier,
                accounts=AccountStatusCache(settings.AUTH_DEACTIVATION_TTL),
                cursor_codec=CursorCodec(settings.SECRET_KEY.get_secret_value()),
                storage=storage,
                ai_model=ai_model,
            )

    return lifespan


def create_app(
    settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None
) -> FastAPI:
    """The application; `tracer_provider` (tests) replaces the one the OTEL_* variables
    configure, and stays its caller's to shut down."""
    settings = settings or get_settings()
    if settings.STORAGE_BACKEND == "s3":
        require_storage_extra()
    require_email_extra(settings)
    require_payments_extra(settings)
    require_ai_extra(settings)
    setup_logging(settings.LOG_LEVEL, settings.log_format)
    init_error_reporting(settings, component="api")
    owns_tracer_provider = tracer_provider is None
    if tracer_provider is None:
        tracer_provider = tracing.configure_tracing(settings, component="api")
    auth = provider_config(settings)
    docs = settings.docs_enabled
    app = FastAPI(
        telemetry=tracing.fastapi_telemetry(tracer_provider),
        generate_unique_id_function=openapi.operation_id,
        title=settings.PROJECT_NAME,
        version=__version__,
        debug=False,
        lifespan=_lifespan(settings, auth, tracer_provider, owns_tracer_provider),
        openapi_url=f"{settings.API_V1_STR}/openapi.json" if docs else None,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.settings = settings
    app.state.request_metrics = metrics.RequestMetrics() if settings.METRICS_PORT else None
    register_exception_handlers(app)
    for router, prefix in ROUTERS:
        app.include_router(router, prefix=settings.API_V1_STR + prefix)
    if auth.local_jwks is not None:
        app.include_router(well_known.router)
    check_routes(app.routes)
    openapi.install(app)
    if settings.BACKEND_CORS_ORIGINS:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.BACKEND_CORS_ORIGINS,
            allow_credentials="*" not in settings.BACKEND_CORS_ORIGINS,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=[
                "X-Request-ID",
                "ETag",
                "Location",
                "Retry-After",
                "Idempotent-Replayed",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )
    app.add_middleware(
        RequestContextMiddleware,
        hsts=settings.is_production,
        docs_paths=("/docs", "/redoc", "/docs/oauth2-redirect") if docs else (),
        max_body_bytes=settings.MAX_REQUEST_BODY_BYTES,
        trusted_proxies=TrustedProxies(settings.TRUSTED_PROXIES)
        if settings.TRUSTED_PROXIES
        else None,
        cors_origins=tuple(settings.BACKEND_CORS_ORIGINS),
        metrics=app.state.request_metrics,
    )
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` reads this attribute; building it lazily keeps importing
    # the module (tests, scripts, Alembic) free of side effects.
    if name == "app":
        instance = create_app()
        globals()["app"] = instance
        return instance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

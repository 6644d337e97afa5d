"""Prometheus metrics, served in the text format at `GET /metrics` on a port of their own.

The API's port never answers `/metrics`: `MetricsServer` listens on `METRICS_PORT` (the
worker's on `WORKER_METRICS_PORT`), which stays inside the cluster. With several uvicorn
worker processes `scripts/serve` sets `PROMETHEUS_MULTIPROC_DIR`: each process writes
its values there and whichever process answers a scrape adds them all up (every
process listens on the port with `SO_REUSEPORT`). Without it (one process: `make dev`,
Kubernetes' `WEB_CONCURRENCY=1`) the process' own registry is served, with the
standard `process_*` metrics.

Labels are bounded by the code, never by what a client sends: routes are templates
(`/api/v1/items/{item_id}`, or `unmatched`), methods outside the HTTP set are `OTHER`,
statuses are classes (`2xx`).

To add a metric, declare it here (a counter's name without `_total`; give a gauge a
`multiprocess_mode`) and update it where the event happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry
from starlette.types import Scope

from app import __version__
from app.core.config import Settings
from app.core.pool import FairQueuePool
from app.core.route_templates import route_template

logger = logging.getLogger(__name__)

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# An API's requests: 5 ms to 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POOL_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
UNMATCHED_ROUTE = "unmatched"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

APP_INFO = Gauge(
    "app_info", "Always 1; the labels say what runs.", ("version", "environment", "component"),
    multiprocess_mode="max",
)  # fmt: skip
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered.", ("method", "route", "status"))
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from the request's arrival to the end of its response.",
    ("method", "route"),
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight", "Requests being served.", multiprocess_mode="livesum"
)
DB_POOL_SIZE = Gauge(
    "db_pool_size", "Connections the pools keep (DB_POOL_SIZE per process).",
    multiprocess_mode="livesum",
)  # fmt: skip
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out", "Connections in use.", multiprocess_mode="livesum"
)
DB_POOL_OVERFLOW = Gauge(
    "db_pool_overflow", "Connections open beyond the pool size.", multiprocess_mode="livesum"
)
DB_POOL_WAIT = Histogram(
    "db_pool_wait_seconds",
    "Time to get a connection from the pool (opening one included).",
    buckets=POOL_WAIT_BUCKETS,
)
REDIS_ERRORS = Counter("redis_errors", "Redis calls that failed or timed out.")
REDIS_BACKOFF = Gauge(
    "redis_backoff", "1 while a process skips Redis after a failure.", multiprocess_mode="livemax"
)
JWKS_FETCHES = Counter("jwks_fetches", "Fetches of the identity provider's keys.", ("outcome",))
TOKENS_REJECTED = Counter(
    "auth_tokens_rejected", "Bearer tokens refused, by the check that failed.", ("reason",)
)
RATE_LIMITED = Counter("rate_limited_requests", "Requests refused with 429, by budget.", ("scope",))
IDEMPOTENT_REPLAYS = Counter(
    "idempotent_replays", "Requests answered from a stored Idempotency-Key response."
)
CACHE_READS = Counter("cache_reads", "Reads of the resource row cache.", ("result",))
AI_TOKENS = Counter(
    "ai_tokens", "Language model tokens used, by model and kind.", ("model", "kind")
)
AI_STREAMS_CUT_SHORT = Counter(
    "ai_streams_cut_short",
    "Streamed answers that ended before the model reported usage (client gone, failure).",
    ("model",),
)
JOBS_STARTED = Counter("jobs_started", "Job tries started.", ("function",))
JOBS_COMPLETED = Counter("jobs_completed", "Jobs that completed.", ("function",))
JOBS_FAILED = Counter("jobs_failed", "Jobs that failed for good.", ("function",))
JOBS_RETRIED = Counter("jobs_retried", "Job tries that failed and will be retried.", ("function",))
JOB_DURATION = Histogram(
    "job_duration_seconds", "Duration of one job try.", ("function",), buckets=JOB_BUCKETS
)
QUEUE_DEPTH = Gauge(
    "job_queue_depth", "Jobs waiting in the queue (read from Redis at scrape time).",
    ("queue",), multiprocess_mode="mostrecent",
)  # fmt: skip


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))


def exposition() -> bytes:
    """Every metric in the text format: this process', or all processes' in multiprocess mode."""
    if not multiprocess_enabled():
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class RequestMetrics:
    """Counts, times and tracks in-flight requests for `RequestContextMiddleware`.

    In-flight requests are a plain counter, copied into `http_requests_in_flight` by
    `sample` (every second and before each scrape) rather than written twice a request.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        # Label lookups cost a lock and a dict hit each: keep the children per key.
        self._children: dict[tuple[str, int, int], tuple[Any, Any]] = {}

    def started(self) -> None:
        self.in_flight += 1

    def sample(self) -> None:
        HTTP_IN_FLIGHT.set(self.in_flight)

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        self.in_flight -= 1
        method = scope["method"]
        label = method if method in HTTP_METHODS else "OTHER"  # bounded, whatever is sent
        # Keyed by the route object: its template is looked up once, not per request.
        key = (label, id(scope.get("route")), status // 100)
        children = self._children.get(key)
        if children is None:
            route = route_template(scope) or UNMATCHED_ROUTE
            children = (
                HTTP_REQUESTS.labels(label, route, f"{status // 100}xx"),
                HTTP_DURATION.labels(label, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def watch_pool(engine: Any, pool_size: int) -> Callable[[], None]:
    """Keep the pool gauges current from the engine's pool events (a sync engine);
    returns what stops it (call it when the engine is disposed)."""
    pool = engine.pool
    if not hasattr(pool, "overflow"):  # NullPool, StaticPool: nothing to saturate
        return lambda: None
    DB_POOL_SIZE.inc(pool_size)

    def checked_out(*_: object) -> None:
        DB_POOL_CHECKED_OUT.inc()
        DB_POOL_OVERFLOW.set(max(pool.overflow(), 0))

    def checked_in(*_: object) -> None:
        DB_POOL_CHECKED_OUT.dec()
        DB_POOL_OVERFLOW.set(max(pool.overflow(), 0))

    event.listen(pool, "checkout", checked_out)
    event.listen(pool, "checkin", checked_in)

    def unwatch() -> None:
        event.remove(pool, "checkout", checked_out)
        event.remove(pool, "checkin", checked_in)
        DB_POOL_SIZE.dec(pool_size)

    return unwatch


class TimedQueuePool(FairQueuePool):
    """The engine's pool, timing each checkout into `db_pool_wait_seconds`."""

    def _do_get(self) -> ConnectionPoolEntry:
        started = time.perf_counter()
        try:
            return super()._do_get()
        finally:
            DB_POOL_WAIT.observe(time.perf_counter() - started)


ScrapeHook = Callable[[], Awaitable[None]]
_MAX_REQUEST_LINES = 100
_REQUEST_TIMEOUT = 5.0
_HOOK_TIMEOUT = 1.0
SAMPLE_INTERVAL = 1.0


class MetricsServer:
    """A minimal HTTP server answering `GET /metrics` (404 for anything else), run on the
    app's event loop. `before_scrape` hooks refresh values read at scrape time (queue
    depth); one that fails or takes over a second leaves the last value."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        before_scrape: Sequence[ScrapeHook] = (),
        samplers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.before_scrape = tuple(before_scrape)
        # Cheap copies of in-process state into gauges: every second, and before a scrape
        # (in multiprocess mode the other processes' last copies are at most a second old).
        self.samplers = tuple(samplers)
        self._server: asyncio.Server | None = None
        self._sampling: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen; a port already taken by another program is logged, not fatal."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_port=True
            )
        except OSError as exc:
            logger.error("metrics are not served on %s:%s: %s", self.host, self.port, exc)
            return
        self.port = self._server.sockets[0].getsockname()[1]
        if self.samplers:
            self._sampling = asyncio.create_task(self._sample_every_second())

    async def _sample_every_second(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    def _sample(self) -> None:
        for sample in self.samplers:
            sample()

    async def aclose(self) -> None:
        if self._sampling is not None:
            self._sampling.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                request_line = await reader.readline()
                for _ in range(_MAX_REQUEST_LINES):
                    if await reader.readline() in (b"\r\n", b"\n", b""):
                        break
            method, _, rest = request_line.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method in ("GET", "HEAD") and path == "/metrics":
                await self._refresh()
                body = await asyncio.to_thread(exposition)
                head = f"HTTP/1.1 200 OK\r\ncontent-type: {CONTENT_TYPE_PLAIN_0_0_4}\r\n"
            else:
                body = b"not found\n"
                head = "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\n"
            head += f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _refresh(self) -> None:
        self._sample()
        for hook in self.before_scrape:
            try:
                async with asyncio.timeout(_HOOK_TIMEOUT):
                    await hook()
            except Exception as exc:
                logger.debug("metrics hook %r failed: %s", hook, exc)


class _Queue(Protocol):
    queue_name: str

    async def depth(self) -> int: ...


async def start_metrics_server(
    settings: Settings,
    port: int,
    queue: _Queue | None,
    *,
    component: str,
    requests: RequestMetrics | None = None,
) -> MetricsServer:
    """Serve this process' metrics on `port` (`app_info` set, the queue's depth read at
    each scrape when there is a queue, in-flight requests sampled from `requests`)."""
    APP_INFO.labels(__version__, settings.ENVIRONMENT.value, component).set(1)
    hooks: list[ScrapeHook] = []
    if queue is not None:

        async def read_queue_depth() -> None:
            QUEUE_DEPTH.labels(queue.queue_name).set(await queue.depth())

        hooks.append(read_queue_depth)
    samplers = [requests.sample] if requests is not None else []
    server = MetricsServer(settings.metrics_host, port, before_scrape=hooks, samplers=samplers)
    await server.start()
    return server


def mark_process_dead() -> None:
    """In multiprocess mode, let `live*` gauges drop this process (call at shutdown)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

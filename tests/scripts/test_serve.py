"""scripts/serve (the production image's CMD) and scripts/healthcheck.py (its HEALTHCHECK),
run for real: uvicorn from this environment on a free port, on a throwaway SQLite file."""

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict

from tests.support import CLOSED_PORT_URL, ROOT, free_port, read_until

SERVE = ROOT / "scripts" / "serve"
HEALTHCHECK = ROOT / "scripts" / "healthcheck.py"


def server_env(tmp_path: Path, port: int) -> dict[str, str]:
    # The working directory is tmp_path, so a developer's .env is never read.
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "ENVIRONMENT": "test",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        "LOG_FORMAT": "console",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "METRICS_PORT": "0",
    }


async def run_healthcheck(env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def command_line(pid: int) -> str:
    # -ww: without a terminal, ps cuts the line at 80 columns (a long checkout path
    # would hide the arguments).
    ps = await asyncio.create_subprocess_exec(
        "ps", "-ww", "-o", "args=", "-p", str(pid), stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await ps.communicate()
    return stdout.decode()


@asynccontextmanager
async def serving(env: dict[str, str], cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    # Its own process group, so cleanup reaches anything it started, whatever happens.
    process = await asyncio.create_subprocess_exec(
        str(SERVE), env=env, cwd=cwd, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(60):
            await read_until(process.stderr, "Application startup complete")
        yield process
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def test_serve_answers_the_healthcheck_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    env = server_env(tmp_path, free_port())
    async with serving(env, tmp_path) as process:
        assert await run_healthcheck(env) == (0, "")
        # `exec`: the process the platform signals is uvicorn itself, not a shell that
        # would die of SIGTERM and leave uvicorn running until SIGKILL.
        assert "uvicorn app.main:app" in await command_line(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.stderr is not None
        async with asyncio.timeout(60):
            log = await read_until(process.stderr, "Finished server process")
            # After its graceful shutdown uvicorn re-raises the signal it received.
            assert await process.wait() == -signal.SIGTERM
        assert "Shutting down" in log
        assert "Application shutdown complete" in log


async def test_serve_trusts_forwarded_headers_from_the_allowed_proxy(tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tmp_path, port) | {"TRUSTED_PROXIES": "127.0.0.1"}
    async with serving(env, tmp_path), httpx.AsyncClient() as client:
        # A redirect is built from the request's scheme and host: behind a TLS-terminating
        # proxy it must point at https, or browsers would be sent to plain http.
        response = await client.get(
            f"http://127.0.0.1:{port}/api/v1/public/health/",
            headers={"X-Forwarded-Proto": "https"},
        )
        assert response.status_code == 307
        assert response.headers["location"].startswith("https://")


async def test_serve_ignores_forwarded_headers_from_untrusted_peers(tmp_path: Path) -> None:
    """Not even from loopback, which uvicorn itself would trust by default."""
    port = free_port()
    env = server_env(tmp_path, port) | {"TRUSTED_PROXIES": "10.9.8.7"}
    async with serving(env, tmp_path), httpx.AsyncClient() as client:
        response = await client.get(
            f"http://127.0.0.1:{port}/api/v1/public/health/",
            headers={"X-Forwarded-Proto": "https"},
        )
        assert response.status_code == 307
        assert response.headers["location"].startswith("http://")


async def test_healthcheck_fails_when_nothing_answers(tmp_path: Path) -> None:
    env = server_env(tmp_path, int(CLOSED_PORT_URL.split(":")[1]))
    code, stderr = await run_healthcheck(env)
    assert code == 1
    assert "unhealthy" in stderr
    assert "/api/v1/public/health" in stderr


def served_by(counter_file: Path) -> float:
    """How many health requests one process' own metrics file counts."""
    values = MmapedDict.read_all_values_from_file(str(counter_file))  # type: ignore[no-untyped-call]
    return float(
        sum(
            value
            for key, value, *_ in values
            if '"http_requests"' in key and "/api/v1/public/health" in key and '"2xx"' in key
        )
    )


async def test_two_workers_counts_add_up_in_one_scrape(tmp_path: Path) -> None:
    """WEB_CONCURRENCY=2: each worker process counts its own requests, and a scrape of
    the shared metrics port (answered by either process) reports them all."""
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "prometheus"
    stale = metrics_dir / "counter_1.db"
    metrics_dir.mkdir()
    stale.write_bytes(b"left over from an earlier run")
    env = server_env(tmp_path, port) | {
        "WEB_CONCURRENCY": "2",
        "METRICS_PORT": str(metrics_port),
        "METRICS_HOST": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    url = f"http://127.0.0.1:{port}/api/v1/public/health"

    async def call() -> None:
        async with httpx.AsyncClient() as client:  # a connection each: both processes serve
            assert (await client.get(url)).status_code == 200

    def counts() -> dict[str, float]:
        return {path.name: served_by(path) for path in metrics_dir.glob("counter_*.db")}

    async with serving(env, tmp_path):
        assert not stale.exists()  # emptied before the workers started
        # The second worker may still be starting when the first answers: send requests
        # in rounds until both have served some (or the deadline passes).
        requests, deadline = 0, time.monotonic() + 30
        while True:
            await asyncio.gather(*(call() for _ in range(10)))
            requests += 10
            per_process = counts()
            if len(per_process) == 2 and all(per_process.values()):
                break
            if time.monotonic() > deadline:
                break
        async with httpx.AsyncClient() as client:
            scrapes = [
                (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                for _ in range(6)
            ]
    assert len(per_process) == 2, per_process
    assert all(per_process.values()), per_process  # each process answered some
    assert sum(per_process.values()) == requests
    route = 'route="/api/v1/public/health"'
    for text in scrapes:  # whichever process answered, the total is the same
        (line,) = [
            line
            for line in text.splitlines()
            if line.startswith("http_requests_total{") and route in line and "2xx" in line
        ]
        assert float(line.rsplit(" ", 1)[1]) == requests

"""Throughput of the template's request path next to a bare FastAPI app, in one run.

    .venv/bin/python scripts/bench.py [--duration 5] [--connections 32]
                                      [--database-url postgresql+asyncpg://...]

Each server runs alone (one uvicorn worker) while a load generator in another process
sends keep-alive requests (`wrk` when it is installed, otherwise a built-in asyncio
client). Runs alternate between the template with metrics on (METRICS_PORT set), the
template with metrics off and the bare app for `--rounds` rounds; the best rate of
each is kept, so a busy machine slows all alike. The report gives requests per
second, what metrics cost (on/off) and the ratio to the baseline:

    liveness            template /api/v1/public/health  vs bare /live      (target 0.85x)
    readiness           template /api/v1/public/health/ready vs bare /live (informational)
    authenticated read  template GET /api/v1/users/me  vs bare SELECT 1    (target 0.60x)

The authenticated read runs only when the app has the local auth provider and
`/api/v1/users/me` (a token is minted by `scripts/local_token.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass(frozen=True)
class Target:
    name: str
    path: str
    baseline_path: str
    goal: float | None
    needs_token: bool = False


TARGETS = (
    Target("liveness", "/api/v1/public/health", "/live", 0.85),
    Target("readiness", "/api/v1/public/health/ready", "/live", None),
    Target("authenticated read", "/api/v1/users/me", "/select1", 0.60, needs_token=True),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(module: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        PYTHON, "-m", "uvicorn", module, "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{module} did not start; see {log}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def run_load(
    port: int, path: str, headers: dict[str, str], seconds: float, connections: int
) -> float:
    if shutil.which("wrk"):
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
        ).stdout
        if "Non-2xx" in output:
            raise SystemExit(f"{path} answered errors under load:\n{output}")
        match = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if match is None:
            raise SystemExit(f"could not read wrk's output:\n{output}")
        return float(match.group(1))
    command = [
        PYTHON, str(Path(__file__).with_name("bench_client.py")), str(port), path,
        str(seconds), str(connections), json.dumps(headers),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr or result.stdout)
    return float(result.stdout.strip())


def measure(
    module: str,
    env: dict[str, str],
    path: str,
    headers: dict[str, str],
    args: argparse.Namespace,
    log: Path,
) -> float:
    port = free_port()
    server = start_server(module, port, env, log)
    try:
        run_load(port, path, headers, 1.0, args.connections)  # warm-up
        return run_load(port, path, headers, args.duration, args.connections)
    finally:
        stop_server(server)


def mint_token(env: dict[str, str]) -> str | None:
    if not (ROOT / "scripts" / "local_token.py").exists():
        return None
    command = [PYTHON, "-m", "scripts.local_token", "--sub", "bench", "--email", "b@example.com"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def prepare_database(env: dict[str, str]) -> None:
    subprocess.run(
        [PYTHON, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved runs; the best of each is kept"
    )
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--log-level", default="INFO", help="template LOG_LEVEL (access log on at INFO)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir}/bench.db"
    base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    template_env = {
        **base_env, "ENVIRONMENT": "development", "DATABASE_URL": database_url,
        "LOG_FORMAT": "json", "LOG_LEVEL": args.log_level,
        "REDIS_URL": os.environ.get("REDIS_URL", ""),
        "LOCAL_AUTH_KEY_FILE": str(workdir / "local-auth.pem"),
    }  # fmt: skip
    baseline_env = {**base_env, "BENCH_DATABASE_URL": database_url}
    prepare_database(template_env)
    token = mint_token(template_env)

    tool = "wrk" if shutil.which("wrk") else "asyncio client"
    print(f"database: {database_url.split('@')[-1]}   load: {tool}, {args.connections} connections")
    print(
        f"{'target':<20} {'template req/s':>15} {'metrics off':>12} {'on/off':>7}"
        f" {'bare req/s':>11} {'ratio':>7} {'goal':>6}"
    )
    for target in TARGETS:
        if target.needs_token and token is None:
            print(f"{target.name:<20} skipped: no local token available")
            continue
        headers = {"Authorization": f"Bearer {token}"} if target.needs_token else {}
        ours = unmetered = bare = 0.0
        for _ in range(args.rounds):  # interleaved, so background load hits all alike
            metered_env = {**template_env, "METRICS_PORT": str(free_port())}
            ours = max(
                ours,
                measure(
                    "app.main:app", metered_env, target.path, headers, args, workdir / "app.log"
                ),
            )
            unmetered_env = {**template_env, "METRICS_PORT": "0"}
            unmetered = max(
                unmetered,
                measure(
                    "app.main:app", unmetered_env, target.path, headers, args, workdir / "app.log"
                ),
            )
            bare = max(
                bare,
                measure(
                    "scripts.bench_baseline:app",
                    baseline_env,
                    target.baseline_path,
                    {},
                    args,
                    workdir / "bare.log",
                ),
            )
        goal = f"{target.goal:.2f}" if target.goal else "-"
        print(
            f"{target.name:<20} {ours:>15.0f} {unmetered:>12.0f} {ours / unmetered:>6.2f}x"
            f" {bare:>11.0f} {ours / bare:>6.2f}x {goal:>6}"
        )


if __name__ == "__main__":
    main()

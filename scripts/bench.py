"""The template's request path next to the physical minimum, workload by workload.

    make bench ARGS="--postgres postgresql://postgres@127.0.0.1:5432/postgres \\
                     --redis redis://127.0.0.1:6379/14"
    python -m scripts.bench [--rounds 3] [--duration 5] [--connections 32] [--only NAME,...]

The baseline is `scripts/bench_baseline.py`: a bare FastAPI app whose `/db` runs
`SELECT 1` on a plain asyncpg pool (one database round trip, nothing else) and whose
`/live` answers without I/O. Each app runs alone as one uvicorn worker while `wrk`
(`-t1`, keep-alive) loads it; rounds alternate template and bare, so a busy machine
slows both alike, and the report gives the median over rounds (not the best run):
requests per second, the template/bare ratio against the goal, CPU milliseconds per
request (the server process's user + system time over the requests it answered),
and p50/p99 latency. Then idle and loaded RSS and cold start (process start to the
first answered request) for both apps.

With `--postgres` (a server URL; the benchmark creates and drops a scratch database
on it) and `--redis`, every workload runs on PostgreSQL + Redis; the SQLite default
runs liveness and `/users/me` without Redis. Both pools are capped at 10
connections. The template runs as deployed: metrics on, JSON access log at INFO.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LIVE = "/api/v1/public/health"
ITEMS = "/api/v1/items"
POOL_SIZE = 10
SEEDED_ITEMS = 400
TOKENS = 5000  # more than the verifier's cache of verified tokens holds (4096)
TICKS = os.sysconf("SC_CLK_TCK")
TEMPLATE = "app.main:app"
BARE = "scripts.bench_baseline:app"


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    goal: float | None
    bare: str = "/db"
    script: str | None = None  # a wrk Lua script: tokens, create, patch
    auth: bool = True
    on_sqlite: bool = False


WORKLOADS = (
    Workload("liveness", LIVE, 0.9, bare="/live", auth=False, on_sqlite=True),
    Workload("readiness", f"{LIVE}/ready", None, auth=False),
    Workload("users/me", "/api/v1/users/me", 0.5, on_sqlite=True),
    Workload("users/me new tokens", "/api/v1/users/me", 0.35, script="tokens"),
    Workload("items list", f"{ITEMS}?limit=20", 0.4),
    Workload("item create", ITEMS, 0.3, script="create"),
    Workload("item patch", ITEMS, 0.3, script="patch"),
)

LUA = {
    "tokens": """
local tokens = {}
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. tokens[i]})
end
""",
    "create": """
wrk.method = "POST"
wrk.body = '{"title": "A benchmark item", "tags": ["bench", "load"]}'
wrk.headers["Content-Type"] = "application/json"
""",
    "patch": """
local ids, versions = {}, {}
for line in io.lines(os.getenv("BENCH_ITEMS")) do
  local id, version = line:match("(%S+) (%d+)")
  ids[#ids + 1] = id
  versions[id] = version
end
local i, n = 0, 0
request = function()
  i = i % #ids + 1
  n = n + 1
  local id = ids[i]
  return wrk.format("PATCH", "/api/v1/items/" .. id, {
    ["Authorization"] = wrk.headers["Authorization"],
    ["Content-Type"] = "application/json",
    ["If-Match"] = '"' .. versions[id] .. '"',
  }, '{"title": "Patched ' .. n .. '"}')
end
response = function(status, headers, body)
  if status >= 300 and os.getenv("BENCH_DEBUG") then print(status, body) end
  local id, version = body:match('"id":"([^"]+)"'), body:match('"version":(%d+)')
  if id and version then versions[id] = version end
end
""",
}


@dataclass
class Run:
    rate: float
    cpu_ms: float
    p50_ms: float
    p99_ms: float
    cold_start_ms: float
    idle_rss_mb: float
    loaded_rss_mb: float


@dataclass
class Environment:
    label: str
    template: dict[str, str]
    bare: dict[str, str]
    workdir: Path
    token: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _proc(pid: int, name: str) -> str:
    return (Path("/proc") / str(pid) / name).read_text()


def cpu_seconds(pid: int) -> float:
    fields = _proc(pid, "stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", _proc(pid, "status"))
    return int(match.group(1)) / 1024 if match else 0.0


@contextmanager
def server(
    module: str, env: dict[str, str], log: Path, live: str
) -> Iterator[tuple[int, int, float]]:
    """A running app: (port, pid, cold start in ms until `live` first answered 200)."""
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", module, "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--loop", "uvloop", "--http", "httptools", "--no-proxy-headers",
    ]  # fmt: skip
    started = time.perf_counter()
    with log.open("ab") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
    try:
        deadline = started + 60
        while True:
            try:
                if _request(port, "GET", live, {})[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{module} did not start; see {log}")
            time.sleep(0.005)
        yield port, process.pid, (time.perf_counter() - started) * 1000
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    port: int, path: str, seconds: float, connections: int, headers: dict[str, str],
    script: Path | None, env: dict[str, str],
) -> tuple[int, float, float, float]:  # fmt: skip
    """(requests, requests/s, p50 ms, p99 ms); any non-2xx answer stops the benchmark."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    done = subprocess.run(
        [*command, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    output = done.stdout + done.stderr
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    broken = errors is not None and any(int(n) for n in errors.groups()[:3])
    if done.returncode != 0 or "Non-2xx" in output or broken:
        raise SystemExit(f"{path} failed under load:\n{output}")
    if errors is not None and int(errors.group(4)):
        print(f"  ({errors.group(4)} requests to {path} took over wrk's 2 s timeout)", flush=True)
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50, p99 = (
        _duration_ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", output).group(1))  # type: ignore[union-attr]
        for p in (50, 99)
    )
    return requests, rate, p50, p99


def measure(
    module: str, env: Environment, app_env: dict[str, str], workload: Workload, path: str,
    args: argparse.Namespace,
) -> Run:  # fmt: skip
    live = LIVE if module.startswith("app") else "/live"
    headers = (
        {"Authorization": f"Bearer {env.token}"}
        if workload.auth and module.startswith("app")
        else {}
    )
    script = env.files.get(workload.script or "") if module.startswith("app") else None
    log = env.workdir / f"{module.split('.')[-1].split(':')[0]}.log"
    with server(module, app_env, log, live) as (port, pid, cold_start):
        if workload.script == "patch" and script is not None:
            write_versions(port, env)
        idle = rss_mb(pid)
        wrk(port, path, 1, args.connections, headers, script, app_env | wrk_env(env))  # warm-up
        if workload.script == "patch" and script is not None:
            time.sleep(1)  # requests in flight when wrk stopped still finish on the server
            write_versions(port, env)
        before = cpu_seconds(pid)
        requests, rate, p50, p99 = wrk(
            port, path, args.duration, args.connections, headers, script, app_env | wrk_env(env)
        )
        cpu_ms = (cpu_seconds(pid) - before) * 1000 / max(requests, 1)
        return Run(rate, cpu_ms, p50, p99, cold_start, idle, rss_mb(pid))


def wrk_env(env: Environment) -> dict[str, str]:
    return {
        "BENCH_TOKENS": str(env.workdir / "tokens.txt"),
        "BENCH_ITEMS": str(env.workdir / "items.txt"),
    }


def write_versions(port: int, env: Environment) -> None:
    """The seeded items and their current versions, for the PATCH script's If-Match."""
    headers = {"Authorization": f"Bearer {env.token}"}
    lines, cursor = [], None
    while True:
        query = "?limit=100&sort=created_at" + (f"&cursor={cursor}" if cursor else "")
        _, body = _request(port, "GET", ITEMS + query, headers)
        page = json.loads(body)
        lines += [f"{item['id']} {item['version']}" for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None or len(lines) >= SEEDED_ITEMS:
            break
    (env.workdir / "items.txt").write_text("\n".join(lines[:SEEDED_ITEMS]) + "\n")


def prepare(env: Environment, *, seed: bool) -> None:
    """Migrate, mint the tokens, and (for PostgreSQL) seed the items the workloads use."""
    subprocess.run(
        [PYTHON, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env.template,
        check=True, capture_output=True,
    )  # fmt: skip
    minted = subprocess.run(
        [PYTHON, "-c", MINT, str(TOKENS)], cwd=ROOT, env=env.template,
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    env.token = minted[0]
    (env.workdir / "tokens.txt").write_text("\n".join(minted[1:]) + "\n")
    for name, source in LUA.items():
        env.files[name] = env.workdir / f"{name}.lua"
        env.files[name].write_text(source)
    if not seed:
        return
    with server(TEMPLATE, env.template, env.workdir / "seed.log", LIVE) as (port, _, _):
        headers = {"Authorization": f"Bearer {env.token}", "Content-Type": "application/json"}
        for n in range(SEEDED_ITEMS):
            body = json.dumps({"title": f"Seeded item {n}", "tags": ["seed"]}).encode()
            status, answer = _request(port, "POST", ITEMS, headers, body)
            if status != 201:
                raise SystemExit(f"seeding failed: {status} {answer[:300]!r}")


# Minted in a child process with the template's settings: the first line is the token
# every authenticated workload sends, the rest are distinct tokens of the same caller.
MINT = """
import sys, uuid
from app.core.config import load_settings
from app.core.local_issuer import LocalIssuer
issuer = LocalIssuer.from_settings(load_settings())
def token(): return issuer.issue_token("bench", email="bench@example.com", tenant_id="bench",
    ttl=86400, extra_claims={"jti": uuid.uuid4().hex})
print("\\n".join(token() for _ in range(int(sys.argv[1]) + 1)))
"""


async def _create_database(server_url: str, name: str, drop: bool) -> None:
    import asyncpg

    connection = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        statement = f'DROP DATABASE IF EXISTS "{name}"' if drop else f'CREATE DATABASE "{name}"'
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(server_url, name, drop=False))
    try:
        base = server_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_create_database(server_url, name, drop=True))


def environments(
    args: argparse.Namespace, workdir: Path, postgres: str | None
) -> list[Environment]:
    common = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    template = {
        **common, "ENVIRONMENT": "development", "LOG_FORMAT": "json", "LOG_LEVEL": "INFO",
        "LOCAL_AUTH_KEY_FILE": str(workdir / "local-auth.pem"), "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": "0", "RATE_LIMIT_ITEM_WRITES": "100000000/minute",
        "RATE_LIMIT_DEFAULT": "100000000/minute",
    }  # fmt: skip
    sqlite_dir = workdir / "sqlite"
    sqlite_dir.mkdir()
    sqlite_url = f"sqlite+aiosqlite:///{sqlite_dir}/bench.db"
    found = [
        Environment(
            "SQLite",
            template | {"DATABASE_URL": sqlite_url, "REDIS_URL": "", "METRICS_PORT": "0"},
            common | {"BENCH_DATABASE_URL": f"sqlite:///{sqlite_dir}/bench.db"},
            sqlite_dir,
        )
    ]
    if postgres is not None:
        pg_dir = workdir / "postgres"
        pg_dir.mkdir()
        found.append(
            Environment(
                "PostgreSQL + Redis" if args.redis else "PostgreSQL",
                template | {"DATABASE_URL": postgres, "REDIS_URL": args.redis or ""},
                common | {"BENCH_DATABASE_URL": postgres, "BENCH_POOL_SIZE": str(POOL_SIZE)},
                pg_dir,
            )
        )
    return found


def _median(runs: list[Run], attribute: str) -> float:
    values: list[float] = [getattr(run, attribute) for run in runs]
    return statistics.median(values)


def report(workload: Workload, ours: list[Run], bare: list[Run]) -> None:
    ratio = statistics.median(o.rate / b.rate for o, b in zip(ours, bare, strict=True))
    goal = f"{workload.goal:.2f}x" if workload.goal else "-"
    mark = "" if workload.goal is None else (" ok" if ratio >= workload.goal else " BELOW")
    cells = [
        f"{workload.name:<21}", f"{_median(ours, 'rate'):>8.0f}", f"{_median(bare, 'rate'):>8.0f}",
        f"{ratio:>6.2f}x", f"{goal:>6}{mark:<6}",
        f"{_median(ours, 'cpu_ms'):>5.2f}/{_median(bare, 'cpu_ms'):<5.2f}",
        f"{_median(ours, 'p50_ms'):>6.1f}/{_median(bare, 'p50_ms'):<6.1f}",
        f"{_median(ours, 'p99_ms'):>6.1f}/{_median(bare, 'p99_ms'):<6.1f}",
    ]  # fmt: skip
    print(" ".join(cells), flush=True)


HEADER = (
    f"{'workload':<21} {'ours/s':>8} {'bare/s':>8} {'ratio':>7} {'goal':<12} "
    f"{'CPU ms/req':<11} {'p50 ms':<13} {'p99 ms':<13}"
)


def run_environment(
    env: Environment, workloads: list[Workload], args: argparse.Namespace
) -> dict[str, list[Run]]:
    prepare(env, seed=env.label != "SQLite")
    rounds = f"{args.duration:.0f} s x {args.rounds} rounds, median"
    print(f"\n{env.label}: wrk -t1 -c{args.connections}, {rounds}\n{HEADER}")
    runs: dict[str, list[Run]] = {"template": [], "bare": []}
    for workload in workloads:
        ours, bare = [], []
        for _ in range(args.rounds):  # interleaved: background load hits both alike
            ours.append(measure(TEMPLATE, env, env.template, workload, workload.path, args))
            bare.append(measure(BARE, env, env.bare, workload, workload.bare, args))
        report(workload, ours, bare)
        runs["template"] += ours
        runs["bare"] += bare
    return runs


def print_memory(runs: dict[str, list[Run]]) -> None:
    print("\nmemory and start-up (median; loaded: the largest seen)")
    for name, seen in runs.items():
        if seen:
            print(
                f"  {name:<9} idle {_median(seen, 'idle_rss_mb'):5.0f} MB   loaded "
                f"{max(r.loaded_rss_mb for r in seen):5.0f} MB   cold start "
                f"{_median(seen, 'cold_start_ms'):4.0f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per timed run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per app")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL"),
        help="a PostgreSQL server URL (a scratch database is made on it)",
    )
    parser.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL"))
    parser.add_argument("--only", default="", help="comma-separated workload names")
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("the benchmark needs wrk (Debian/Ubuntu: apt-get install wrk)")
    chosen = [w for w in WORKLOADS if not args.only or w.name in args.only.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    runs: dict[str, list[Run]] = {"template": [], "bare": []}
    try:
        with contextlib_postgres(args) as postgres:
            for env in environments(args, workdir, postgres):
                on_sqlite = env.label == "SQLite"
                workloads = [w for w in chosen if w.on_sqlite or not on_sqlite]
                if workloads and (args.sqlite or not on_sqlite):
                    for name, seen in run_environment(env, workloads, args).items():
                        runs[name] += seen
        print_memory(runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def contextlib_postgres(args: argparse.Namespace) -> Iterator[str | None]:
    if not args.postgres:
        print("no --postgres: only the SQLite workloads run (liveness, users/me)")
        yield None
        return
    with scratch_postgres(args.postgres) as url:
        yield url


if __name__ == "__main__":
    main()

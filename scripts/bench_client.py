"""A minimal keep-alive HTTP/1.1 load generator for scripts/bench.py (used when wrk is
not installed). Prints requests per second; exits non-zero on any non-2xx answer.

    python scripts/bench_client.py PORT PATH SECONDS CONNECTIONS '{"Header": "value"}'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop  # installed with uvicorn[standard]


async def connection(port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            if not 200 <= status < 300:
                raise SystemExit(f"got HTTP {status}: {head.decode(errors='replace')}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def run(
    port: int, path: str, seconds: float, connections: int, headers: dict[str, str]
) -> float:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    counts = [0]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(connection(port, request, deadline, counts) for _ in range(connections)))
    return counts[0] / (time.perf_counter() - started)


def main() -> None:
    port, path, seconds, connections, headers = sys.argv[1:6]
    rate = uvloop.run(run(int(port), path, float(seconds), int(connections), json.loads(headers)))
    print(f"{rate:.1f}")


if __name__ == "__main__":
    main()

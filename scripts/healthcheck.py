"""Container health check: exit 0 when the API's liveness route answers 200, else 1.

Standard library only (the image has no curl) and no app import, so it costs a few
milliseconds. It reads the same PORT and API_V1_STR the server uses.

    python scripts/healthcheck.py
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

LIVENESS_PATH = "/public/health"


def liveness_url() -> str:
    port = os.environ.get("PORT") or "8000"
    prefix = os.environ.get("API_V1_STR") or "/api/v1"
    return f"http://127.0.0.1:{port}{prefix}{LIVENESS_PATH}"


def main() -> int:
    url = liveness_url()
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - fixed http URL
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

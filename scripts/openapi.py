"""Write the API's OpenAPI document to `docs/openapi.json` (`make openapi`), without
starting a server; `--check` exits 1 when the committed copy is out of date.

The document is built from the code with fixed settings (the environment and `.env`
are not read), so it is the same on every machine: the local provider (whose JWKS
route it includes), the default API prefix, docs on. Front-ends generate their types
from it (see docs/items-api.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from app.core.config import Settings
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "openapi.json"


def _settings() -> Settings:
    # A throwaway signing key: the document does not contain it, and nothing is written.
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Settings(
        _env_file=None,
        ENVIRONMENT="development",
        DATABASE_URL="sqlite+aiosqlite:///:memory:",
        API_V1_STR="/api/v1",
        DOCS_ENABLED=True,
        AUTH_PROVIDER="local",
        LOCAL_AUTH_ALGORITHM="ES256",
        LOCAL_AUTH_PRIVATE_KEY=SecretStr(key.decode()),
        METRICS_PORT=0,
    )


def document() -> dict[str, Any]:
    """The OpenAPI document, as the running API serves it."""
    schema: dict[str, Any] = create_app(_settings()).openapi()
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DOCUMENT)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    args = parser.parse_args(argv)
    text = render(document())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `make openapi`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

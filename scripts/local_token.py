"""Print an access token from the local auth provider (`make token sub=... roles=...`).

Uses the same settings as the app (environment and `.env`), so the API started with
`make dev` accepts the token: `curl -H "Authorization: Bearer $(make -s token)" ...`.
"""

from __future__ import annotations

import argparse
import sys

from app.core.config import AuthProvider, ConfigError, load_settings
from app.core.local_issuer import LocalIssuer


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sub", default="", help="subject (user id); default dev-user")
    parser.add_argument("--email", default="", help="email claim")
    parser.add_argument("--roles", default="", help="comma list of roles, e.g. admin,editor")
    parser.add_argument("--tenant", default="", help="tenant id claim")
    parser.add_argument("--name", default="", help="display name claim")
    parser.add_argument("--ttl", type=int, default=0, help="lifetime in seconds")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings()
        if settings.AUTH_PROVIDER is not AuthProvider.LOCAL:
            print(
                f"AUTH_PROVIDER is {settings.AUTH_PROVIDER.value}: tokens come from that "
                "provider; `make token` only works with AUTH_PROVIDER=local",
                file=sys.stderr,
            )
            return 2
        issuer = LocalIssuer.from_settings(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    token = issuer.issue_token(
        args.sub or "dev-user",
        email=args.email or None,
        roles=[role.strip() for role in args.roles.split(",") if role.strip()],
        tenant_id=args.tenant or None,
        ttl=args.ttl or settings.LOCAL_AUTH_TOKEN_TTL,
        extra_claims={"name": args.name} if args.name else None,
    )
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The strict parts of token verification that PyJWT leaves open, used by
`app.core.security.TokenVerifier`.

- JSON parsing that refuses repeated member names in the header and the payload (two
  parsers may read `{"sub": "a", "sub": "b"}` differently: first or last wins).
- NumericDate claims (`exp`, `nbf`, `iat`) that must be JSON numbers (RFC 7519); PyJWT
  alone would take `"1700000000"` and `true`.
- Access tokens only: a `typ` header of `JWT` or `at+jwt` (or only `at+jwt` in strict
  mode), and no ID-token shape (`nonce` or `at_hash`, a `typ` claim other than an
  access token's).
- A cap on the lifetime (`exp - iat`) and, per provider, a refusal of anonymous sign-ins.

Every refusal is a `RejectedTokenError`: `check` names it for the log, `message` is what
the 401 says.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import jwt

NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
# `typ` values of an access token (RFC 7519 `JWT`, RFC 9068 `at+jwt`, each with or without
# the `application/` prefix; compared case-insensitively). In the payload Keycloak says
# `Bearer` for access tokens and `ID` for ID tokens.
ACCESS_TOKEN_TYPES = frozenset({"jwt", "application/jwt", "at+jwt", "application/at+jwt"})
AT_JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})
ACCESS_TOKEN_CLAIM_TYPES = ACCESS_TOKEN_TYPES | {"bearer"}
ID_TOKEN_CLAIMS = ("nonce", "at_hash")
TOO_LARGE = "The token is too large."
DUPLICATE_CLAIMS = "The token has duplicate claims."
NOT_AN_ACCESS_TOKEN = "The token is not an access token."  # noqa: S105


class RejectedTokenError(Exception):
    """A token refused by one check: `check` and `detail` are logged, `message` answered."""

    def __init__(self, check: str, detail: object = None, message: str = "") -> None:
        super().__init__(check)
        self.check = check
        self.detail = detail
        self.message = message or "The token is invalid."


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        repeated = [name for name, count in Counter(n for n, _ in pairs).items() if count > 1]
        raise RejectedTokenError("duplicate claims", repeated, DUPLICATE_CLAIMS)
    return members


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """A token segment's JSON object, refusing repeated names, non-objects and nesting too
    deep for the parser."""
    try:
        value = json.loads(data, object_pairs_hook=_unique_members)
    except (ValueError, RecursionError) as exc:
        raise RejectedTokenError("malformed token", f"{what}: {exc}") from None
    if not isinstance(value, dict):
        raise RejectedTokenError("malformed token", f"{what} is not a JSON object")
    return value


def _is_numeric_date(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


class StrictJWT(jwt.PyJWT):
    """PyJWT whose one payload parse (after the signature check) also refuses repeated
    member names and dates that are not JSON numbers, before PyJWT reads the dates."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = json_object(decoded["payload"], "payload")
        for name in NUMERIC_DATE_CLAIMS:
            if name in payload and not _is_numeric_date(payload[name]):
                raise RejectedTokenError(
                    f"{name} not a number", payload[name], f"The token's {name} is not a number."
                )
        return payload


def check_header_type(header: Mapping[str, Any], accepted: frozenset[str]) -> None:
    """A `typ` header, when present (always, when `accepted` is the strict set), must be
    one of `accepted`, compared case-insensitively."""
    typ = header.get("typ")
    if (typ is not None or accepted is AT_JWT_TYPES) and not (
        isinstance(typ, str) and typ.lower() in accepted
    ):
        raise RejectedTokenError("typ not an access token", typ, NOT_AN_ACCESS_TOKEN)


def check_token_kind(
    claims: Mapping[str, Any], max_lifetime: int, *, allow_anonymous: bool
) -> None:
    """An access token (not an ID token), not too long-lived (`max_lifetime` 0: no cap),
    not an anonymous sign-in unless allowed."""
    typ = claims.get("typ")
    if typ is not None and not (isinstance(typ, str) and typ.lower() in ACCESS_TOKEN_CLAIM_TYPES):
        raise RejectedTokenError("typ claim not an access token", typ, NOT_AN_ACCESS_TOKEN)
    for name in ID_TOKEN_CLAIMS:
        if name in claims:
            raise RejectedTokenError(f"ID token ({name})", message=NOT_AN_ACCESS_TOKEN)
    lifetime = claims["exp"] - claims["iat"]
    if max_lifetime and lifetime > max_lifetime:
        raise RejectedTokenError("lifetime too long", lifetime, "The token's lifetime is too long.")
    if not allow_anonymous and claims.get("is_anonymous") is True:
        raise RejectedTokenError("anonymous", message="Anonymous sign-ins are not accepted.")

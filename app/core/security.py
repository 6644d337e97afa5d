"""The one token verifier, the `Principal` it returns, and the auth dependencies.

`TokenVerifier` checks a bearer token against the configured provider preset
(`app.core.auth_providers`) using keys from its `KeyStore` (`app.core.jwks`): size cap
before parsing, no repeated JSON member names, per-provider algorithm allow-list, no
`crit` extensions, an access-token `typ`, header URLs (`jku`, `x5u`, `x5c`, `jwk`) never
read, exact `iss`, audience, required `exp`/`iat`/`sub`/`iss` with JSON-number dates,
`nbf`, leeway, no ID-token claims, a lifetime cap. A rejected token is a 401 with a short
reason; the log records which check failed. No provider has its own verification path.
`docs/authentication.md` lists every check in the order it is made.

Handlers use the aliases: `CurrentPrincipal`, `OptionalPrincipal` and
`Depends(require_roles("admin"))`. A resolved principal is also stored at
`request.state.principal` for middleware-adjacent code (rate limits, audit).
"""

from __future__ import annotations

import json
import logging
import re
import reprlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from jwt import PyJWK
from jwt.utils import base64url_decode

from app.core import metrics, tracing
from app.core.auth_providers import ProviderConfig
from app.core.config import Settings
from app.core.exceptions import AuthenticationError, PermissionDeniedError
from app.core.jwks import MAX_KID_LENGTH, JwksFetcher, KeyStore, parse_jwks
from app.core.token_checks import (
    ACCESS_TOKEN_TYPES,
    AT_JWT_TYPES,
    TOO_LARGE,
    RejectedTokenError,
    StrictJWT,
    check_header_type,
    check_token_kind,
    json_object,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255
MAX_EMAIL_LENGTH = 320
MAX_ROLES = 64
MAX_ROLE_LENGTH = 128
MAX_CACHED_TOKENS = 4096
REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss"]
INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
MISSING_TOKEN = {"WWW-Authenticate": "Bearer"}
# What a rejected token's log line quotes of it (an `alg` or `kid` can be any JSON of
# nearly 8 KB): short, and never deeper than a few levels.
_LOG_DETAIL = reprlib.Repr()
_LOG_DETAIL.maxlevel, _LOG_DETAIL.maxstring, _LOG_DETAIL.maxother = 3, 120, 120
# Claims end up in database columns and JSON responses: control characters (C0 and C1,
# NUL above all, which PostgreSQL refuses) and lone surrogates (which no UTF-8 encoder
# accepts: a 500 on both databases) never do.
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as established by a verified token."""

    provider: str
    subject: str
    email: str | None
    roles: frozenset[str]
    tenant_id: str | None
    claims: Mapping[str, Any] = field(compare=False)
    issuer: str = ""  # the token's `iss`: with `subject`, what identifies the caller

    def has_any_role(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name or dotted path (`realm_access.roles`); a literal key wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def roles_from(value: Any) -> frozenset[str]:
    """Roles from a list, a space/comma separated string, or an object's keys (Zitadel)."""
    if isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, list):
        items = [item for item in value if isinstance(item, str)]
    elif isinstance(value, Mapping):
        items = [str(key) for key in value]
    else:
        return frozenset()
    return frozenset(
        item
        for item in items[:MAX_ROLES]
        if 0 < len(item) <= MAX_ROLE_LENGTH and not _UNSTORABLE.search(item)
    )


def _email_from(claims: Mapping[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or len(email) > MAX_EMAIL_LENGTH:
        return None
    if _UNSTORABLE.search(email):
        return None
    return None if claims.get("email_verified") is False else email


def _authorized_party(claims: Mapping[str, Any], config: ProviderConfig) -> bool:
    # Clerk's rule: `azp`, when the token has one, must be a configured party.
    azp = claims.get("azp")
    return azp is None or (isinstance(azp, str) and azp in config.authorized_parties)


@dataclass(frozen=True, slots=True)
class _VerifiedToken:
    principal: Principal
    kid: str | None
    alg: str
    key: PyJWK
    valid_until: float


class TokenVerifier:
    """Verifies bearer tokens for one provider preset and maps claims to a `Principal`."""

    def __init__(
        self,
        config: ProviderConfig,
        keys: KeyStore,
        *,
        leeway: float,
        max_token_bytes: int = 16_384,
        max_lifetime: int = 86_400,
    ) -> None:
        self.config = config
        self.keys = keys
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        self.max_lifetime = max_lifetime  # 0: no cap on `exp - iat`
        self._token_types = AT_JWT_TYPES if config.require_at_jwt else ACCESS_TOKEN_TYPES
        checks_aud = bool(config.audiences) and config.audience_claim == "aud"
        self._audience = sorted(config.audiences) if checks_aud else None
        self._jwt = StrictJWT({"require": REQUIRED_CLAIMS, "verify_aud": checks_aud})
        local = config.local_jwks
        self.published_jwks = json.dumps(local).encode() if local is not None else None
        self._verified: dict[str, _VerifiedToken] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        config: ProviderConfig,
        *,
        tracer_provider: TracerProvider | None = None,
    ) -> TokenVerifier:
        """The verifier `settings` describe; with `tracer_provider`, key fetches are traced."""
        fetcher = None
        if config.fetches_keys:
            client = httpx.AsyncClient(
                timeout=settings.AUTH_HTTP_TIMEOUT,
                follow_redirects=False,
                headers={"accept": "application/json"},
            )
            if tracer_provider is not None:
                tracing.instrument_httpx(client, tracer_provider)
            fetcher = JwksFetcher(
                client,
                issuer=config.issuer,
                jwks_url=config.jwks_url,
                discovery_url=config.discovery_url,
                allow_http=config.allow_http,
            )
        pinned = config.pinned_jwks
        keys = KeyStore(
            algorithms=config.algorithms,
            pinned=parse_jwks(pinned, config.algorithms, pinned=True) if pinned else None,
            document=config.local_jwks,
            fetcher=fetcher,
            ttl=settings.AUTH_JWKS_CACHE_TTL,
            cooldown=settings.AUTH_JWKS_REFRESH_COOLDOWN,
            timeout=settings.AUTH_HTTP_TIMEOUT,
            max_stale=settings.AUTH_JWKS_MAX_STALE,
        )
        return cls(
            config,
            keys,
            leeway=settings.AUTH_LEEWAY,
            max_token_bytes=settings.AUTH_MAX_TOKEN_BYTES,
            max_lifetime=settings.AUTH_MAX_TOKEN_LIFETIME,
        )

    def start(self) -> None:
        self.keys.start()

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def verify(self, token: str) -> Principal:
        """The principal for a valid token; `AuthenticationError` (401) otherwise."""
        cached = self._verified.get(token)
        if cached is not None:
            if await self._still_valid(cached):
                return cached.principal
            self._verified.pop(token, None)  # expired or its key is gone: verify afresh
        try:
            verified = await self._verify(token)
        except RejectedTokenError as rejected:
            metrics.TOKENS_REJECTED.labels(rejected.check).inc()
            logger.info(
                "token rejected: %s (%s)",
                rejected.check,
                _LOG_DETAIL.repr(rejected.detail),
                extra={"auth_check": rejected.check, "auth_provider": self.config.name},
            )
            raise AuthenticationError(rejected.message, headers=INVALID_TOKEN) from None
        self._remember(token, verified)
        return verified.principal

    async def _verify(self, token: str) -> _VerifiedToken:
        header = self._header(token)
        alg: str = header["alg"]
        key = await self._key_for(header)
        claims = self._decode(token, key, alg)
        self._check_claims(claims)
        valid_until = int(claims["exp"]) + self.leeway
        return _VerifiedToken(self._principal(claims), header.get("kid"), alg, key, valid_until)

    async def _still_valid(self, cached: _VerifiedToken) -> bool:
        # A client sends the same token many times: skip the signature check while the
        # token is unexpired and its key is still the one the key store would use (a
        # refreshed key set without that key, or with new key objects, is a miss).
        if time.time() >= cached.valid_until:
            return False
        return await self.keys.find(cached.kid, cached.alg) is cached.key

    def _remember(self, token: str, verified: _VerifiedToken) -> None:
        if len(self._verified) >= MAX_CACHED_TOKENS:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = verified

    def _header(self, token: str) -> dict[str, Any]:
        # Header values reach us latin-1 decoded: one character per byte.
        if len(token) > self.max_token_bytes:
            raise RejectedTokenError("token too large", len(token), TOO_LARGE)
        if token.count(".") != 2:
            raise RejectedTokenError("malformed token", "not three segments")
        try:
            raw = base64url_decode(token.partition(".")[0])
        except ValueError as exc:  # binascii.Error, non-ASCII text
            raise RejectedTokenError("malformed token", exc) from None
        header = json_object(raw, "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.config.algorithms:
            raise RejectedTokenError("algorithm not allowed", alg)
        if "crit" in header or "b64" in header:
            raise RejectedTokenError("unsupported critical header", header.get("crit"))
        check_header_type(header, self._token_types)
        return header

    async def _key_for(self, header: Mapping[str, Any]) -> PyJWK:
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
            raise RejectedTokenError("bad kid", str(kid)[:64])
        key = await self.keys.find(kid, header["alg"])
        if key is None:
            raise RejectedTokenError("no key for kid and algorithm", (kid, header["alg"]))
        return key

    def _decode(self, token: str, key: PyJWK, alg: str) -> dict[str, Any]:
        try:
            return self._jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self.config.issuer,
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise RejectedTokenError("expired", message="The token has expired.") from None
        except jwt.PyJWTError as exc:
            raise RejectedTokenError(type(exc).__name__, exc) from None

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        config = self.config
        subject = claims["sub"]
        if not subject or len(subject) > MAX_SUBJECT_LENGTH or _UNSTORABLE.search(subject):
            raise RejectedTokenError("subject empty, too long or not printable")
        if config.audiences and config.audience_claim != "aud":
            audience = claims.get(config.audience_claim)
            if not isinstance(audience, str) or audience not in config.audiences:
                raise RejectedTokenError(f"audience claim {config.audience_claim}", audience)
        if config.authorized_parties and not _authorized_party(claims, config):
            raise RejectedTokenError("azp not authorized", claims.get("azp"))
        if config.reject_pending_sessions and claims.get("sts") == "pending":
            raise RejectedTokenError("session pending")
        check_token_kind(claims, self.max_lifetime, allow_anonymous=config.allow_anonymous)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        config = self.config
        tenant = claim_at(claims, config.tenant_claim) if config.tenant_claim else None
        if isinstance(tenant, int) and not isinstance(tenant, bool):
            tenant = str(tenant)
        if not isinstance(tenant, str) or not tenant:
            tenant = None
        elif len(tenant) > MAX_SUBJECT_LENGTH or _UNSTORABLE.search(tenant):
            raise RejectedTokenError("tenant claim too long or not printable")
        return Principal(
            provider=config.name,
            subject=claims["sub"],
            email=_email_from(claims),
            roles=roles_from(claim_at(claims, config.roles_claim)),
            tenant_id=tenant,
            claims=MappingProxyType(claims),
            issuer=claims["iss"],
        )

    def token_from_cookie(self, request: Request) -> str | None:
        name = self.config.session_cookie
        return request.cookies.get(name) if name else None


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})
_PRINCIPAL_KEY = "app.principal"  # the request's resolved principal, in its ASGI scope


def _refuse_cross_site(request: Request, allowed_origins: frozenset[str]) -> None:
    """A session cookie rides along with any request a browser makes, a plain form on
    another site included: a cookie-authenticated unsafe request must come from one of
    the authorized origins (`Origin`), or say it is same-origin (`Sec-Fetch-Site`)."""
    origin = request.headers.get("origin")
    if origin is not None:
        if origin in allowed_origins:
            return
    elif request.headers.get("sec-fetch-site") in _SAME_ORIGIN_FETCHES:
        return
    raise PermissionDeniedError(
        "A cookie-authenticated request that changes something must come from an "
        "authorized origin (CLERK_AUTHORIZED_PARTIES); send the token as a Bearer header "
        "from anywhere else."
    )


async def _resolve_principal(request: Request, credentials: str | None) -> Principal | None:
    verifier: TokenVerifier = request.state.verifier
    token = credentials
    if not token:
        token = verifier.token_from_cookie(request)
        if token and request.method not in _SAFE_METHODS:
            _refuse_cross_site(request, verifier.config.authorized_parties)
    if not token:
        return None
    try:
        principal = await verifier.verify(token)
    except AuthenticationError:
        await request.state.rate_limiter.refuse_repeated_failures(request.scope)
        raise
    request.state.principal = principal
    return principal


class BearerAuth(HTTPBearer):
    """The caller's principal as one dependency without dependencies of its own: the
    whole auth chain (bearer header or session cookie, verification, the failed-token
    limit) runs once per request, however many dependencies ask for the caller, and
    costs FastAPI one node to resolve. Declared as FastAPI's `HTTPBearer`, so every
    route using it lists the bearer scheme in the OpenAPI document."""

    def __init__(self, *, required: bool) -> None:
        super().__init__(
            auto_error=False,
            bearerFormat="JWT",
            scheme_name="HTTPBearer",
            description="An access token from the configured identity provider.",
        )
        self.required = required

    async def __call__(self, request: Request) -> Principal | None:  # type: ignore[override]
        scope = request.scope
        if _PRINCIPAL_KEY in scope:
            principal: Principal | None = scope[_PRINCIPAL_KEY]
        else:
            credentials = await super().__call__(request)
            token = credentials.credentials if credentials is not None else None
            principal = await _resolve_principal(request, token)
            scope[_PRINCIPAL_KEY] = principal
        if principal is None and self.required:
            raise AuthenticationError("Authentication required.", headers=MISSING_TOKEN)
        return principal


get_optional_principal = BearerAuth(required=False)
"""The caller, or None when no token was sent. A token that was sent must be valid."""
get_principal = BearerAuth(required=True)
"""The caller; 401 when no token was sent."""

OptionalPrincipal = Annotated[Principal | None, Depends(get_optional_principal)]
CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting callers holding at least one of `roles` (403 otherwise)."""
    if not roles:
        raise ValueError("require_roles() needs at least one role")
    wanted = frozenset(roles)
    message = f"This action requires one of the roles: {', '.join(sorted(wanted))}."

    async def check_roles(principal: CurrentPrincipal) -> Principal:
        if principal.roles.isdisjoint(wanted):
            raise PermissionDeniedError(
                message, headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'}
            )
        return principal

    return check_roles

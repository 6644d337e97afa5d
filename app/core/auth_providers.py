"""Provider presets: what `AUTH_PROVIDER` and its settings mean for token verification.

Each preset is data only (issuer, where the keys live, algorithms, audience rule and
where roles and tenant sit in the claims); the one verifier in `app.core.security`
applies it. Adding a provider means adding a function here, never a new code path.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.core.config import AuthProvider, ConfigError, Settings
from app.core.local_issuer import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalIssuer

SUPABASE_ALGORITHMS = ("ES256", "RS256")
CLERK_ALGORITHMS = ("RS256",)
HMAC_ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Everything the verifier needs to know about one identity provider."""

    name: str
    issuer: str
    algorithms: frozenset[str]
    jwks_url: str | None = None
    discovery_url: str | None = None
    # Keys known without any fetch: `local_jwks` by kid, `pinned_jwks` for any kid.
    local_jwks: Mapping[str, Any] | None = None
    pinned_jwks: Mapping[str, Any] | None = None
    # Empty: no audience check (Clerk). `audience_claim` is "aud" unless the issuer puts
    # the audience elsewhere (Cognito access tokens: "client_id").
    audiences: frozenset[str] = frozenset()
    audience_claim: str = "aud"
    authorized_parties: frozenset[str] = frozenset()
    reject_pending_sessions: bool = False
    # RFC 9068: only tokens whose header says `typ: at+jwt` (OIDC_REQUIRE_AT_JWT).
    require_at_jwt: bool = False
    # Supabase anonymous sign-ins (`is_anonymous: true`); SUPABASE_ALLOW_ANONYMOUS.
    allow_anonymous: bool = True
    roles_claim: str = "roles"
    tenant_claim: str | None = None
    session_cookie: str | None = None
    allow_http: bool = False

    @property
    def fetches_keys(self) -> bool:
        return self.jwks_url is not None or self.discovery_url is not None


def _pem_to_jwk(pem: str, variable: str) -> dict[str, Any]:
    try:
        public_key = load_pem_public_key(pem.encode())
        jwk: dict[str, Any] = jwt.get_algorithm_by_name("RS256").to_jwk(public_key, as_dict=True)
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise ConfigError(
            f"invalid configuration:\n  {variable}: not an RSA public key ({exc})"
        ) from None
    return {**jwk, "alg": "RS256", "use": "sig"}


def _secret_jwk(secret: str) -> dict[str, Any]:
    encoded = base64.urlsafe_b64encode(secret.encode()).rstrip(b"=").decode()
    return {"kty": "oct", "k": encoded, "alg": HMAC_ALGORITHM, "use": "sig"}


def _supabase(settings: Settings) -> ProviderConfig:
    issuer = f"{settings.SUPABASE_URL}/auth/v1"
    algorithms = set(SUPABASE_ALGORITHMS)
    pinned = None
    if settings.SUPABASE_JWT_SECRET is not None:
        algorithms.add(HMAC_ALGORITHM)
        pinned = {"keys": [_secret_jwk(settings.SUPABASE_JWT_SECRET.get_secret_value())]}
    return ProviderConfig(
        name=AuthProvider.SUPABASE.value,
        issuer=issuer,
        algorithms=frozenset(algorithms),
        jwks_url=f"{issuer}/.well-known/jwks.json",
        pinned_jwks=pinned,
        audiences=frozenset({settings.SUPABASE_JWT_AUDIENCE}),
        allow_anonymous=settings.SUPABASE_ALLOW_ANONYMOUS,
        roles_claim="app_metadata.roles",
        tenant_claim="app_metadata.tenant_id",
    )


def _clerk(settings: Settings) -> ProviderConfig:
    pinned = None
    jwks_url: str | None = f"{settings.CLERK_ISSUER}/.well-known/jwks.json"
    if settings.CLERK_JWT_KEY:
        pinned = {"keys": [_pem_to_jwk(settings.CLERK_JWT_KEY, "CLERK_JWT_KEY")]}
        jwks_url = None  # verification with no network at all
    return ProviderConfig(
        name=AuthProvider.CLERK.value,
        issuer=settings.CLERK_ISSUER,
        algorithms=frozenset(CLERK_ALGORITHMS),
        jwks_url=jwks_url,
        pinned_jwks=pinned,
        authorized_parties=frozenset(settings.CLERK_AUTHORIZED_PARTIES),
        reject_pending_sessions=True,
        roles_claim="o.rol",
        tenant_claim="o.id",
        session_cookie="__session",
    )


def _oidc(settings: Settings) -> ProviderConfig:
    issuer = settings.OIDC_ISSUER
    discovery = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    return ProviderConfig(
        name=AuthProvider.OIDC.value,
        issuer=issuer,
        algorithms=frozenset(settings.OIDC_ALGORITHMS),
        jwks_url=settings.OIDC_JWKS_URL or None,
        discovery_url=None if settings.OIDC_JWKS_URL else discovery,
        audiences=frozenset(settings.OIDC_AUDIENCE),
        audience_claim=settings.OIDC_AUDIENCE_CLAIM,
        require_at_jwt=settings.OIDC_REQUIRE_AT_JWT,
        roles_claim=settings.OIDC_ROLES_CLAIM,
        tenant_claim=settings.OIDC_TENANT_CLAIM or None,
    )


def _local(settings: Settings) -> ProviderConfig:
    issuer = LocalIssuer.from_settings(settings)
    return ProviderConfig(
        name=AuthProvider.LOCAL.value,
        issuer=LOCAL_ISSUER,
        algorithms=frozenset({issuer.algorithm}),
        local_jwks=issuer.jwks,
        audiences=frozenset({LOCAL_AUDIENCE}),
        roles_claim="roles",
        tenant_claim="tenant_id",
    )


_PRESETS: dict[AuthProvider, Callable[[Settings], ProviderConfig]] = {
    AuthProvider.SUPABASE: _supabase,
    AuthProvider.CLERK: _clerk,
    AuthProvider.OIDC: _oidc,
    AuthProvider.LOCAL: _local,
}


def provider_config(settings: Settings) -> ProviderConfig:
    """The preset for `AUTH_PROVIDER`; raises `ConfigError` for unusable key material."""
    config = _PRESETS[settings.AUTH_PROVIDER](settings)
    # http:// issuers and JWKS URLs (a loopback IdP in tests) only outside production.
    return replace(config, allow_http=not settings.is_production)

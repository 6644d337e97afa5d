"""Provider presets: each provider's settings yield the right issuer, key source,
audience rule and claim mapping, checked on the wiring and end to end against a
loopback identity provider shaped like the real one."""

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from httpx import AsyncClient

from app.core.auth_providers import provider_config
from app.core.local_issuer import LOCAL_AUDIENCE, LOCAL_ISSUER
from tests.idp import IdentityProvider, new_key, sign_raw
from tests.support import make_settings, running_app

SQLITE = "sqlite+aiosqlite:///:memory:"
ME = "/api/v1/users/me"
SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def app_for(database_url: str, **settings: Any) -> AsyncIterator[AsyncClient]:
    async with running_app(make_settings(database_url, **settings)) as (_, client):
        yield client


# --- wiring --------------------------------------------------------------------------


def test_supabase_preset() -> None:
    config = provider_config(
        make_settings(SQLITE, AUTH_PROVIDER="supabase", SUPABASE_URL="https://ref.supabase.co/")
    )
    assert config.issuer == "https://ref.supabase.co/auth/v1"
    assert config.jwks_url == "https://ref.supabase.co/auth/v1/.well-known/jwks.json"
    assert config.audiences == {"authenticated"}
    assert config.algorithms == {"ES256", "RS256"}
    assert config.pinned_jwks is None
    with_secret = provider_config(
        make_settings(
            SQLITE,
            AUTH_PROVIDER="supabase",
            SUPABASE_URL="https://ref.supabase.co",
            SUPABASE_JWT_SECRET=SECRET,
        )
    )
    assert with_secret.algorithms == {"ES256", "RS256", "HS256"}
    assert with_secret.pinned_jwks is not None


def test_clerk_preset() -> None:
    config = provider_config(
        make_settings(
            SQLITE,
            AUTH_PROVIDER="clerk",
            CLERK_ISSUER="https://clerk.example.com",
            CLERK_AUTHORIZED_PARTIES="https://app.example.com,https://admin.example.com",
        )
    )
    assert config.issuer == "https://clerk.example.com"
    assert config.jwks_url == "https://clerk.example.com/.well-known/jwks.json"
    assert config.audiences == frozenset()  # Clerk tokens carry no aud
    assert config.authorized_parties == {"https://app.example.com", "https://admin.example.com"}
    assert (config.roles_claim, config.tenant_claim) == ("o.rol", "o.id")
    assert config.session_cookie == "__session"


@pytest.mark.parametrize(
    ("issuer", "discovery"),
    [
        (
            "https://tenant.eu.auth0.com/",
            "https://tenant.eu.auth0.com/.well-known/openid-configuration",
        ),
        (
            "https://sso.example/realms/demo",
            "https://sso.example/realms/demo/.well-known/openid-configuration",
        ),
    ],
    ids=["auth0 trailing slash", "keycloak realm"],
)
def test_oidc_preset_discovers_from_the_exact_issuer(issuer: str, discovery: str) -> None:
    config = provider_config(
        make_settings(SQLITE, AUTH_PROVIDER="oidc", OIDC_ISSUER=issuer, OIDC_AUDIENCE="api")
    )
    assert config.issuer == issuer
    assert config.discovery_url == discovery
    assert config.jwks_url is None
    assert config.audiences == {"api"}
    assert config.audience_claim == "aud"


def test_oidc_preset_with_a_jwks_url_and_cognito_claims() -> None:
    config = provider_config(
        make_settings(
            SQLITE,
            AUTH_PROVIDER="oidc",
            OIDC_ISSUER="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool",
            OIDC_AUDIENCE="client123",
            OIDC_AUDIENCE_CLAIM="client_id",
            OIDC_JWKS_URL="https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool/jwks",
            OIDC_ROLES_CLAIM="cognito:groups",
        )
    )
    assert config.discovery_url is None
    assert config.jwks_url is not None
    assert config.audience_claim == "client_id"
    assert config.roles_claim == "cognito:groups"


def test_local_preset() -> None:
    config = provider_config(make_settings(SQLITE))
    assert (config.issuer, config.audiences) == (LOCAL_ISSUER, frozenset({LOCAL_AUDIENCE}))
    assert config.local_jwks is not None
    assert not config.fetches_keys
    assert config.allow_http  # outside production


# --- end to end ----------------------------------------------------------------------


async def test_auth0_issuer_keeps_its_trailing_slash(database_url: str, clean_db: None) -> None:
    async with IdentityProvider(issuer_path="/") as idp:
        roles_claim = "https://api.example.com/roles"  # Auth0 namespaced claim with dots
        settings = {"AUTH_PROVIDER": "oidc", "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "api"}
        roles: dict[str, Any] = {roles_claim: ["admin"]}
        async with app_for(database_url, **settings, OIDC_ROLES_CLAIM=roles_claim) as client:
            ok = await client.get(ME, headers=bearer(idp.token(**roles)))
            no_slash = await client.get(ME, headers=bearer(idp.token(iss=idp.base_url)))
    assert ok.status_code == 200
    assert ok.json()["roles"] == ["admin"]
    assert idp.issuer.endswith("/")
    assert no_slash.status_code == 401


async def test_keycloak_realm_roles(database_url: str, clean_db: None) -> None:
    realm = "/realms/demo"
    async with (
        IdentityProvider(
            issuer_path=realm,
            jwks_path=f"{realm}/protocol/openid-connect/certs",
            audience="account",
        ) as idp,
        app_for(
            database_url,
            AUTH_PROVIDER="oidc",
            OIDC_ISSUER=idp.issuer,
            OIDC_AUDIENCE="account",
            OIDC_ROLES_CLAIM="realm_access.roles",
            OIDC_TENANT_CLAIM="organization.id",
        ) as client,
    ):
        token = idp.token(
            realm_access={"roles": ["editor", "offline_access"]},
            organization={"id": "acme"},
        )
        response = await client.get(ME, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["roles"] == ["editor", "offline_access"]
    assert response.json()["tenant_id"] == "acme"
    assert idp.paths[:2] == [
        f"{realm}/.well-known/openid-configuration",
        f"{realm}/protocol/openid-connect/certs",
    ]


@pytest.mark.parametrize(
    ("client_id", "status"),
    [("client123", 200), ("other-client", 401), (None, 401), (["client123"], 401)],
)
async def test_cognito_access_tokens_are_checked_through_the_audience_claim(
    database_url: str, clean_db: None, client_id: Any, status: int
) -> None:
    async with (
        IdentityProvider(issuer_path="/eu-west-1_Pool", audience=None) as idp,
        app_for(
            database_url,
            AUTH_PROVIDER="oidc",
            OIDC_ISSUER=idp.issuer,
            OIDC_AUDIENCE="client123",
            OIDC_AUDIENCE_CLAIM="client_id",
            OIDC_ROLES_CLAIM="cognito:groups",
        ) as client,
    ):
        groups: dict[str, Any] = {"cognito:groups": ["ops"]}
        token = idp.token(client_id=client_id, token_use="access", **groups)
        response = await client.get(ME, headers=bearer(token))
    assert response.status_code == status
    if status == 200:
        assert response.json()["roles"] == ["ops"]


@asynccontextmanager
async def supabase(
    database_url: str, **extra: Any
) -> AsyncIterator[tuple[IdentityProvider, AsyncClient]]:
    keys = [new_key("ES256")]
    async with (
        IdentityProvider(issuer_path="/auth/v1", audience="authenticated", keys=keys) as idp,
        app_for(
            database_url, AUTH_PROVIDER="supabase", SUPABASE_URL=idp.base_url, **extra
        ) as client,
    ):
        yield idp, client


async def test_supabase_asymmetric_tokens(database_url: str, clean_db: None) -> None:
    async with supabase(database_url) as (idp, client):
        token = idp.token(
            email="ada@example.com",
            role="authenticated",
            app_metadata={"roles": ["admin"], "tenant_id": "t-1"},
        )
        response = await client.get(ME, headers=bearer(token))
        anon_key = idp.token(sub=None, role="anon")  # the project's anon key has no sub
        assert (await client.get(ME, headers=bearer(anon_key))).status_code == 401
        shared = sign_raw({"alg": "HS256"}, idp.claims(), SECRET.encode())
        assert (await client.get(ME, headers=bearer(shared))).status_code == 401  # no secret set
    assert response.status_code == 200
    body = response.json()
    assert (body["email"], body["roles"], body["tenant_id"]) == (
        "ada@example.com",
        ["admin"],
        "t-1",
    )
    assert idp.paths[0] == "/auth/v1/.well-known/jwks.json"


async def test_supabase_anonymous_sign_ins_are_a_setting(database_url: str, clean_db: None) -> None:
    """Anonymous users are accepted by default (Supabase issues them ordinary tokens) and
    refused with SUPABASE_ALLOW_ANONYMOUS=false."""
    async with supabase(database_url) as (idp, client):
        anonymous = idp.token(role="authenticated", is_anonymous=True)
        assert (await client.get(ME, headers=bearer(anonymous))).status_code == 200
    async with supabase(database_url, SUPABASE_ALLOW_ANONYMOUS="false") as (idp, client):
        anonymous = idp.token(role="authenticated", is_anonymous=True)
        refused = await client.get(ME, headers=bearer(anonymous))
        signed_in = idp.token(role="authenticated", is_anonymous=False)
        assert (await client.get(ME, headers=bearer(signed_in))).status_code == 200
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "Anonymous sign-ins are not accepted."


async def test_supabase_legacy_secret_is_a_separate_key_source(
    database_url: str, clean_db: None
) -> None:
    async with supabase(database_url, SUPABASE_JWT_SECRET=SECRET) as (idp, client):
        public_pem = idp.key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        async def status(token: str) -> int:
            return (await client.get(ME, headers=bearer(token))).status_code

        assert (
            await status(sign_raw({"alg": "HS256", "typ": "JWT"}, idp.claims(), SECRET.encode()))
            == 200
        )
        assert await status(idp.token()) == 200  # ES256 from the JWKS still works
        forged = {"alg": "HS256", "kid": idp.key.kid}
        assert await status(sign_raw(forged, idp.claims(), public_pem)) == 401
        assert (
            await status(sign_raw(forged, idp.claims(), json.dumps(idp.key.public_jwk()).encode()))
            == 401
        )
        assert await status(sign_raw({"alg": "HS256"}, idp.claims(), b"x" * 40)) == 401
        assert await status(sign_raw({"alg": "HS384"}, idp.claims(), SECRET.encode())) == 401


def clerk_claims(**claims: Any) -> dict[str, Any]:
    return {"azp": "https://app.example.com", "sid": "sess_1", "v": 2, **claims}


@asynccontextmanager
async def clerk(
    database_url: str, **extra: Any
) -> AsyncIterator[tuple[IdentityProvider, AsyncClient]]:
    async with IdentityProvider(audience=None) as idp:
        settings = {
            "AUTH_PROVIDER": "clerk",
            "CLERK_ISSUER": idp.issuer,
            "CLERK_AUTHORIZED_PARTIES": "https://app.example.com",
            **extra,
        }
        async with app_for(database_url, **settings) as client:
            yield idp, client


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        (clerk_claims(), 200),
        (clerk_claims(azp=None), 200),  # no azp (e.g. a backend-minted token): allowed
        (clerk_claims(aud="custom-template"), 200),  # Clerk has no audience rule
        (clerk_claims(azp="https://evil.example.com"), 401),
        (clerk_claims(azp=["https://app.example.com"]), 401),
        (clerk_claims(sts="pending"), 401),
        (clerk_claims(sts="active"), 200),
    ],
    ids=[
        "azp allowed",
        "no azp",
        "aud ignored",
        "azp not allowed",
        "azp not a string",
        "sts pending",
        "sts active",
    ],
)
async def test_clerk_azp_and_session_status(
    database_url: str, clean_db: None, claims: dict[str, Any], status: int
) -> None:
    async with clerk(database_url) as (idp, client):
        response = await client.get(ME, headers=bearer(idp.token(**claims)))
    assert response.status_code == status, response.text


async def test_clerk_organisation_claims_and_session_cookie(
    database_url: str, clean_db: None
) -> None:
    async with clerk(database_url) as (idp, client):
        token = idp.token(**clerk_claims(o={"id": "org_123", "rol": "admin", "slg": "acme"}))
        response = await client.get(ME, headers={"Cookie": f"__session={token}"})
    assert response.status_code == 200
    assert (response.json()["tenant_id"], response.json()["roles"]) == ("org_123", ["admin"])


async def test_clerk_pem_key_verifies_without_any_network(
    database_url: str, clean_db: None
) -> None:
    async with IdentityProvider(audience=None) as idp:
        idp.mode = "error"
        pem = (
            idp.key.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        async with app_for(
            database_url, AUTH_PROVIDER="clerk", CLERK_ISSUER=idp.issuer, CLERK_JWT_KEY=pem
        ) as client:
            ok = await client.get(ME, headers=bearer(idp.token(**clerk_claims())))
            other_key = idp.token(new_key("RS256", 3), **clerk_claims())
            rejected = await client.get(ME, headers=bearer(other_key))
        assert idp.jwks_fetches == 0
    assert ok.status_code == 200
    assert rejected.status_code == 401


async def test_expired_clerk_token_is_rejected(database_url: str, clean_db: None) -> None:
    async with clerk(database_url) as (idp, client):
        token = idp.token(**clerk_claims(exp=int(time.time()) - 120))
        assert (await client.get(ME, headers=bearer(token))).status_code == 401

"""The verifier's behaviour around the attacks: what is tolerated, missing tokens, what
is logged, JWKS outages, rotation, floods, the auth dependencies and the cache of
verified tokens."""

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from httpx import AsyncClient

from app.core import security
from app.core.auth_providers import provider_config
from app.core.exceptions import AuthenticationError
from app.core.security import OptionalPrincipal, Principal, TokenVerifier, require_roles
from app.main import create_app
from tests.idp import IdentityProvider, bearer, oidc_settings, sign_raw
from tests.support import Clock, assert_unauthorized, running_app

ME = "/api/v1/users/me"
SQLITE = "sqlite+aiosqlite:///:memory:"


def now() -> int:
    return int(time.time())


@pytest.mark.parametrize(
    "tweak",
    [
        {"exp": "within-leeway"},
        {"aud": ["other", "api"]},
        {"headers": {"jku": "http://127.0.0.1:9/jwks", "x5u": "http://127.0.0.1:9/x"}},
        {"headers": {"typ": "at+jwt"}},
    ],
    ids=["exp within the leeway", "aud list with ours", "jku and x5u ignored", "typ at+jwt"],
)
async def test_tolerated_variations_are_accepted(
    oidc_client: AsyncClient, idp: IdentityProvider, tweak: dict[str, Any]
) -> None:
    claims = {k: v for k, v in tweak.items() if k != "headers"}
    if claims.get("exp") == "within-leeway":
        claims["exp"] = now() - 10
    token = idp.token(headers=tweak.get("headers"), **claims)
    assert (await oidc_client.get(ME, headers=bearer(token))).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}],
    ids=["no header", "basic scheme", "empty bearer"],
)
async def test_a_missing_token_is_a_401_without_an_error_code(
    oidc_client: AsyncClient, headers: dict[str, str]
) -> None:
    body = assert_unauthorized(await oidc_client.get(ME, headers=headers), "Bearer")
    assert body["error"]["message"] == "Authentication required."


async def test_a_session_cookie_is_no_token_outside_clerk(
    oidc_client: AsyncClient, idp: IdentityProvider
) -> None:
    response = await oidc_client.get(ME, headers={"Cookie": f"__session={idp.token()}"})
    assert_unauthorized(response, "Bearer")


async def test_the_log_names_the_failed_check_the_response_does_not(
    oidc_client: AsyncClient, idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.core.security"):
        wrong_aud = await oidc_client.get(ME, headers=bearer(idp.token(aud="other-api")))
        expired = await oidc_client.get(ME, headers=bearer(idp.token(exp=now() - 3600)))
    assert assert_unauthorized(wrong_aud)["error"]["message"] == "The token is invalid."
    assert "aud" not in wrong_aud.text.lower()
    assert assert_unauthorized(expired)["error"]["message"] == "The token has expired."
    checks = [record.auth_check for record in caplog.records if hasattr(record, "auth_check")]
    assert checks == ["InvalidAudienceError", "expired"]


async def test_the_log_quotes_little_of_a_hostile_header(
    oidc_client: AsyncClient, idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    header = {"alg": "A" * 4000, "kid": idp.key.kid}
    token = sign_raw(header, idp.claims(), idp.key.private, "RS256")
    with caplog.at_level(logging.INFO, logger="app.core.security"):
        assert_unauthorized(await oidc_client.get(ME, headers=bearer(token)))
    [record] = [record for record in caplog.records if hasattr(record, "auth_check")]
    assert record.auth_check == "algorithm not allowed"
    assert len(record.getMessage()) < 300


async def test_no_reachable_jwks_and_no_cached_keys_is_a_503(
    database_url: str, clean_db: None
) -> None:
    async with IdentityProvider() as idp:
        idp.mode = "error"
        async with running_app(oidc_settings(database_url, idp)) as (_, client):
            response = await client.get(ME, headers=bearer(idp.token()))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert int(response.headers["retry-after"]) > 0


async def test_start_up_does_not_wait_for_a_slow_identity_provider(
    database_url: str, clean_db: None
) -> None:
    async with IdentityProvider() as idp:
        idp.mode, idp.slow_seconds = "slow", 60
        settings = oidc_settings(database_url, idp, AUTH_HTTP_TIMEOUT=50)
        async with asyncio.timeout(20), running_app(settings) as (_, client):
            assert (await client.get("/api/v1/public/health")).status_code == 200


async def test_a_rotated_key_is_accepted_after_one_refetch(
    database_url: str, clean_db: None
) -> None:
    async with IdentityProvider() as idp:
        settings = oidc_settings(database_url, idp, AUTH_JWKS_REFRESH_COOLDOWN=0)
        async with running_app(settings) as (_, client):
            assert (await client.get(ME, headers=bearer(idp.token()))).status_code == 200
            fetched = idp.jwks_fetches
            new_key = idp.rotate()
            response = await client.get(ME, headers=bearer(idp.token(new_key)))
            assert response.status_code == 200
            assert idp.jwks_fetches == fetched + 1


async def test_a_flood_of_random_kids_fetches_nothing_within_the_cooldown(
    database_url: str, clean_db: None
) -> None:
    async with (
        IdentityProvider() as idp,
        running_app(oidc_settings(database_url, idp)) as (_, client),
    ):
        assert (await client.get(ME, headers=bearer(idp.token()))).status_code == 200
        assert idp.jwks_fetches == 1
        tokens = [idp.token(headers={"kid": uuid.uuid4().hex}) for _ in range(200)]
        responses = await asyncio.gather(*(client.get(ME, headers=bearer(t)) for t in tokens))
        assert {response.status_code for response in responses} == {401}
        assert idp.jwks_fetches == 1


# --- dependencies ------------------------------------------------------------------

probe = APIRouter(prefix="/probe")


@probe.get("/optional")
async def optional(principal: OptionalPrincipal, request: Request) -> dict[str, Any]:
    stored = getattr(request.state, "principal", None)
    return {"subject": principal.subject if principal else None, "stored": stored is principal}


@probe.get("/admin")
async def admin_only(
    principal: Annotated[Principal, Depends(require_roles("admin", "owner"))],
) -> dict[str, str]:
    return {"subject": principal.subject}


@pytest.fixture
async def probe_client(
    database_url: str, clean_db: None, idp: IdentityProvider
) -> AsyncIterator[AsyncClient]:
    settings = oidc_settings(database_url, idp)
    app: FastAPI = create_app(settings)
    app.include_router(probe)
    async with running_app(settings, app) as (_, client):
        yield client


async def test_optional_principal(probe_client: AsyncClient, idp: IdentityProvider) -> None:
    anonymous = await probe_client.get("/probe/optional")
    assert anonymous.json() == {"subject": None, "stored": True}
    signed_in = await probe_client.get("/probe/optional", headers=bearer(idp.token(sub="bob")))
    assert signed_in.json() == {"subject": "bob", "stored": True}
    bad = await probe_client.get("/probe/optional", headers=bearer(idp.token(aud="x")))
    assert_unauthorized(bad)


async def test_require_roles(probe_client: AsyncClient, idp: IdentityProvider) -> None:
    assert_unauthorized(await probe_client.get("/probe/admin"), "Bearer")
    denied = await probe_client.get("/probe/admin", headers=bearer(idp.token(roles=["viewer"])))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    assert denied.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'
    allowed = await probe_client.get("/probe/admin", headers=bearer(idp.token(roles=["owner"])))
    assert allowed.json() == {"subject": "user-1"}


def test_principal_is_immutable() -> None:
    principal = Principal("oidc", "s", None, frozenset({"a"}), None, claims={})
    with pytest.raises(AttributeError):
        principal.subject = "other"  # type: ignore[misc]
    assert principal.has_any_role("a", "b")


# --- verified-token cache ------------------------------------------------------------


def verifier_for(idp: IdentityProvider, clock: Clock, **overrides: Any) -> TokenVerifier:
    settings = oidc_settings(SQLITE, idp, OIDC_JWKS_URL=idp.jwks_url, **overrides)
    verifier = TokenVerifier.from_settings(settings, provider_config(settings))
    verifier.keys.clock = clock
    return verifier


async def test_a_cached_token_stops_working_when_its_key_is_gone() -> None:
    clock = Clock()
    async with IdentityProvider() as idp:
        verifier = verifier_for(idp, clock, AUTH_JWKS_CACHE_TTL=600)
        try:
            token = idp.token(sub="cached")
            assert (await verifier.verify(token)).subject == "cached"
            idp.rotate(keep_old=False)
            clock.advance(599)
            assert (await verifier.verify(token)).subject == "cached"
            clock.advance(1)
            with pytest.raises(AuthenticationError):
                await verifier.verify(token)
        finally:
            await verifier.aclose()


async def test_a_cached_token_still_expires() -> None:
    async with IdentityProvider() as idp:
        verifier = verifier_for(idp, Clock(), AUTH_LEEWAY=0)
        try:
            expires_at = math.ceil(time.time()) + 1  # one to two seconds from now
            token = idp.token(exp=expires_at)
            await verifier.verify(token)  # verified, and now cached
            await asyncio.sleep(expires_at - time.time() + 0.05)
            with pytest.raises(AuthenticationError) as caught:
                await verifier.verify(token)
            assert caught.value.message == "The token has expired."
        finally:
            await verifier.aclose()


async def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "MAX_CACHED_TOKENS", 3)
    async with IdentityProvider() as idp:
        verifier = verifier_for(idp, Clock())
        try:
            tokens = [idp.token(sub=f"s{i}") for i in range(5)]
            subjects = [(await verifier.verify(token)).subject for token in tokens]
            assert subjects == ["s0", "s1", "s2", "s3", "s4"]
            assert len(verifier._verified) == 3
            assert (await verifier.verify(tokens[0])).subject == "s0"  # verified again
        finally:
            await verifier.aclose()

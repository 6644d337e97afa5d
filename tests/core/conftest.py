"""Fixtures for the auth tests: a loopback identity provider and an app trusting it."""

from collections.abc import AsyncIterator

import pytest
from httpx import AsyncClient

from tests.idp import IdentityProvider, oidc_settings
from tests.support import running_app


@pytest.fixture(scope="module")
async def idp() -> AsyncIterator[IdentityProvider]:
    """An OpenID provider at `<loopback>/tenant`, shared by a module's tests."""
    async with IdentityProvider(issuer_path="/tenant") as server:
        yield server


@pytest.fixture
async def oidc_client(
    database_url: str, clean_db: None, idp: IdentityProvider
) -> AsyncIterator[AsyncClient]:
    """A fresh app with AUTH_PROVIDER=oidc trusting `idp` (RS256 and ES256 allowed, so an
    ES256 token against an RSA key reaches the key lookup)."""
    settings = oidc_settings(database_url, idp, OIDC_ALGORITHMS="RS256,ES256")
    async with running_app(settings) as (_, client):
        yield client

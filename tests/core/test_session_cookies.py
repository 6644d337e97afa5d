"""Clerk's `__session` cookie: a browser sends it with any request, a form on another
site included, so cookie-authenticated changes must come from an authorized origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from httpx import AsyncClient

from app.core.config import ConfigError, load_settings
from tests.idp import IdentityProvider
from tests.support import local_public_key, make_settings, running_app

ME = "/api/v1/users/me"
APP = "https://app.example.com"


@asynccontextmanager
async def clerk(database_url: str) -> AsyncIterator[tuple[IdentityProvider, AsyncClient]]:
    async with IdentityProvider(audience=None) as idp:
        settings = make_settings(
            database_url,
            AUTH_PROVIDER="clerk",
            CLERK_ISSUER=idp.issuer,
            CLERK_AUTHORIZED_PARTIES=APP,
        )
        async with running_app(settings) as (_, client):
            yield idp, client


def session_token(idp: IdentityProvider) -> str:
    return idp.token(azp=APP, sid="sess_1", v=2)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": APP}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),  # a sandboxed frame or a file
        ({"Sec-Fetch-Site": "same-origin"}, 200),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({}, 403),  # nothing says where it came from
    ],
    ids=["allowed", "other-site", "opaque", "same-origin", "cross-site", "same-site", "none"],
)
async def test_a_cookie_authenticated_change_must_come_from_an_authorized_origin(
    database_url: str, clean_db: None, headers: dict[str, str], status: int
) -> None:
    async with clerk(database_url) as (idp, client):
        cookie = {"Cookie": f"__session={session_token(idp)}"}
        response = await client.patch(ME, headers=cookie | headers, json={"display_name": "x"})
    assert response.status_code == status, response.text
    if status == 403:
        error = response.json()["error"]
        assert error["code"] == "permission_denied"
        assert "CLERK_AUTHORIZED_PARTIES" in error["message"]


async def test_direct_and_bearer_tokens_need_no_origin(database_url: str, clean_db: None) -> None:
    async with clerk(database_url) as (idp, client):
        token = session_token(idp)
        evil = {"Origin": "https://evil.example"}
        read = await client.get(ME, headers=evil | {"Cookie": f"__session={token}"})
        change = await client.patch(
            ME, headers=evil | {"Authorization": f"Bearer {token}"}, json={"display_name": "y"}
        )
    assert read.status_code == 200  # a cross-site read cannot see the answer (CORS)
    assert change.status_code == 200  # a site cannot make a browser send this header


def test_production_refuses_clerk_without_authorized_parties() -> None:
    values: dict[str, Any] = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": "k" * 40,
        "DATABASE_URL": "postgresql://app@db/app",
        "AUTH_PROVIDER": "clerk",
        "CLERK_ISSUER": "https://clerk.example.com",
        "CLERK_JWT_KEY": local_public_key(),
        "STORAGE_FILESYSTEM_IN_PRODUCTION": "true",
        "EMAIL_BACKEND": "none",
    }
    with pytest.raises(ConfigError, match="CLERK_AUTHORIZED_PARTIES"):
        load_settings(_env_file=None, **values)
    load_settings(_env_file=None, **values, CLERK_AUTHORIZED_PARTIES=APP)

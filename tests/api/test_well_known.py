import jwt

from app.core.config import Settings
from tests.support import local_token, make_settings, production_config, running_app

JWKS = "/.well-known/jwks.json"


async def test_local_provider_publishes_its_public_key(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        response = await client.get(JWKS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/jwk-set+json"
    assert "max-age" in response.headers["cache-control"]
    [key] = response.json()["keys"]
    assert key["kid"] == jwt.get_unverified_header(local_token(settings))["kid"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # nothing private


async def test_the_published_key_verifies_local_tokens(settings: Settings) -> None:
    async with running_app(settings) as (_, client):
        jwks = (await client.get(JWKS)).json()
    token = local_token(settings, "carol", roles=("admin",))
    key = jwt.PyJWK(jwks["keys"][0])
    claims = jwt.decode(token, key, algorithms=["RS256"], audience="urn:local-auth:api")
    assert (claims["sub"], claims["roles"]) == ("carol", ["admin"])


async def test_other_providers_publish_nothing(database_url: str, clean_db: None) -> None:
    settings = make_settings(database_url, **production_config())
    async with running_app(settings) as (_, client):
        response = await client.get(JWKS)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from app.core.config import ConfigError, Settings
from app.core.local_issuer import LocalIssuer, generate_private_key_pem
from tests.support import auth_headers, make_settings, running_app

ROOT = Path(__file__).resolve().parents[2]
SQLITE = "sqlite+aiosqlite:///:memory:"
ME = "/api/v1/users/me"


def test_an_unset_key_is_generated_once_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / ".secrets" / "local.pem"
    settings = make_settings(SQLITE, LOCAL_AUTH_PRIVATE_KEY=None, LOCAL_AUTH_KEY_FILE=str(path))
    first = LocalIssuer.from_settings(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert LocalIssuer.from_settings(settings).kid == first.kid
    assert [p.name for p in path.parent.iterdir()] == ["local.pem"]  # no staging leftovers


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_tokens_carry_the_local_claims(tmp_path: Path, algorithm: str) -> None:
    settings = make_settings(
        SQLITE,
        LOCAL_AUTH_PRIVATE_KEY=None,
        LOCAL_AUTH_KEY_FILE=str(tmp_path / "k.pem"),
        LOCAL_AUTH_ALGORITHM=algorithm,
    )
    issuer = LocalIssuer.from_settings(settings)
    token = issuer.issue_token("s1", email="e@x.io", roles=["b", "a"], tenant_id="t", ttl=60)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"], header["typ"]) == (algorithm, issuer.kid, "at+jwt")
    claims = jwt.decode(token, jwt.PyJWK(issuer.public_jwk), audience="urn:local-auth:api")
    assert claims["exp"] - claims["iat"] == 60
    assert (claims["iss"], claims["roles"], claims["tenant_id"]) == (
        "urn:local-auth",
        ["a", "b"],
        "t",
    )


def test_a_key_of_the_wrong_type_names_the_variable() -> None:
    ec_pem = generate_private_key_pem("ES256").decode()
    settings = make_settings(SQLITE, LOCAL_AUTH_PRIVATE_KEY=ec_pem, LOCAL_AUTH_ALGORITHM="RS256")
    with pytest.raises(ConfigError, match="LOCAL_AUTH_PRIVATE_KEY"):
        LocalIssuer.from_settings(settings)
    broken = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"
    with pytest.raises(ConfigError, match="LOCAL_AUTH_PRIVATE_KEY"):
        LocalIssuer.from_settings(make_settings(SQLITE, LOCAL_AUTH_PRIVATE_KEY=broken))


async def test_a_token_signed_by_another_local_key_is_rejected(settings: Settings) -> None:
    other = LocalIssuer.from_settings(
        make_settings(SQLITE, LOCAL_AUTH_PRIVATE_KEY=generate_private_key_pem("RS256").decode())
    )
    async with running_app(settings) as (_, client):
        ours = LocalIssuer.from_settings(settings)
        other.kid = ours.kid  # claim to be signed by the app's key
        forged = other.issue_token("mallory", roles=["admin"])
        response = await client.get(ME, headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401
        assert (await client.get(ME, headers=auth_headers(settings))).status_code == 200


def script_env(**extra: str) -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "TMPDIR"}
    return {**{k: v for k, v in os.environ.items() if k in keep}, **extra}


async def test_make_token_prints_a_token_the_api_accepts(settings: Settings) -> None:
    assert settings.LOCAL_AUTH_PRIVATE_KEY is not None
    env = script_env(
        AUTH_PROVIDER="local",
        ENVIRONMENT="development",
        LOCAL_AUTH_PRIVATE_KEY=settings.LOCAL_AUTH_PRIVATE_KEY.get_secret_value(),
    )
    process = await asyncio.create_subprocess_exec(
        *("make", "-s", "token", "sub=alice", "email=alice@example.com", "roles=admin,editor"),
        *("tenant=acme", "name=Alice"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    token = stdout.decode().strip()
    assert token.count(".") == 2
    async with running_app(settings) as (_, client):
        response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.json()
    assert (body["subject"], body["email"], body["tenant_id"]) == (
        "alice",
        "alice@example.com",
        "acme",
    )
    assert (body["roles"], body["display_name"]) == (["admin", "editor"], "Alice")


def test_the_token_script_refuses_other_providers() -> None:
    env = script_env(AUTH_PROVIDER="oidc", OIDC_ISSUER="https://id.example/", OIDC_AUDIENCE="api")
    result = subprocess.run(
        [sys.executable, "-m", "scripts.local_token", "--sub", "x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "AUTH_PROVIDER=local" in result.stderr
    assert result.stdout == ""

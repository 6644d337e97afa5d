"""Every attack from the checklist, against a real app and a real loopback identity
provider, ends in a 401 in the standard error shape, and the attacker's server (named
in `jku`/`x5u`) is never contacted."""

import base64
import datetime
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from httpx import AsyncClient

from tests.idp import (
    IdentityProvider,
    b64url,
    bearer,
    ec_key,
    new_key,
    oidc_settings,
    rsa_key,
    sign_raw,
)
from tests.support import assert_unauthorized, running_app

ME = "/api/v1/users/me"
Attack = Callable[[IdentityProvider, IdentityProvider], str]


@pytest.fixture(scope="module")
async def attacker() -> AsyncIterator[IdentityProvider]:
    async with IdentityProvider(issuer_path="/evil", keys=[new_key("RS256", 2)]) as server:
        yield server


def now() -> int:
    return int(time.time())


def public_pem(idp: IdentityProvider) -> bytes:
    return idp.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def self_signed_x5c(attacker: IdentityProvider) -> str:
    key = attacker.key.private
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    start = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def tampered_payload(idp: IdentityProvider) -> str:
    header, _, signature = idp.token().split(".")
    payload = b64url(json.dumps(idp.claims(sub="admin")).encode())
    return f"{header}.{payload}.{signature}"


def tampered_signature(idp: IdentityProvider) -> str:
    header, payload, signature = idp.token().split(".")
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}"


def signed(idp: IdentityProvider, header: dict[str, Any], payload: Any) -> str:
    return sign_raw({"kid": idp.key.kid, **header}, payload, idp.key.private, "RS256")


def with_repeated_sub(idp: IdentityProvider) -> bytes:
    """Valid claims for `alice` with a second `sub` (admin) appended: JSON allows it."""
    return json.dumps(idp.claims(sub="alice")).encode()[:-1] + b', "sub": "admin"}'


def nested(prefix: bytes, depth: int) -> bytes:
    """A JSON object nested deeper than any parser should follow (still under 8 KB)."""
    return prefix + b'"a": ' + b"[" * depth + b"]" * depth + b"}"


def unsigned(alg: str) -> Attack:
    """An unsigned token whose header names `alg`."""
    return lambda idp, _: sign_raw({"alg": alg, "kid": idp.key.kid}, idp.claims(), None)


ATTACKS: dict[str, Attack] = {
    **{f"alg={alg}": unsigned(alg) for alg in ("none", "None", "NONE", "nOnE", "")},
    "alg missing": lambda idp, _: sign_raw({"kid": idp.key.kid}, idp.claims(), None, "RS256"),
    "HS256 keyed with the public PEM": lambda idp, _: sign_raw(
        {"alg": "HS256", "kid": idp.key.kid}, idp.claims(), public_pem(idp)
    ),
    "HS256 keyed with the public JWK": lambda idp, _: sign_raw(
        {"alg": "HS256", "kid": idp.key.kid},
        idp.claims(),
        json.dumps(idp.key.public_jwk()).encode(),
    ),
    "RS512 (valid signature, off the allow-list)": lambda idp, _: idp.token(
        headers={"alg": "RS512"}
    ),
    "PS256 (valid signature, off the allow-list)": lambda idp, _: idp.token(
        headers={"alg": "PS256"}
    ),
    "ES256 token against the RSA key": lambda idp, _: sign_raw(
        {"alg": "ES256", "kid": idp.key.kid}, idp.claims(), ec_key(0)
    ),
    "kid missing": lambda idp, _: idp.token(headers={"kid": None}),
    "kid integer": lambda idp, _: idp.token(headers={"kid": 7}),
    "kid list": lambda idp, _: idp.token(headers={"kid": [idp.key.kid]}),
    "kid object": lambda idp, _: idp.token(headers={"kid": {"id": idp.key.kid}}),
    "kid empty": lambda idp, _: idp.token(headers={"kid": ""}),
    "kid huge": lambda idp, _: idp.token(headers={"kid": "k" * 4000}),
    "kid unknown": lambda idp, _: idp.token(headers={"kid": uuid.uuid4().hex}),
    "jku to the attacker's JWKS": lambda idp, evil: evil.token(
        headers={"jku": evil.jwks_url}, iss=idp.issuer
    ),
    "x5u to the attacker's JWKS": lambda idp, evil: evil.token(
        headers={"x5u": evil.jwks_url}, iss=idp.issuer
    ),
    "embedded jwk of the attacker": lambda idp, evil: evil.token(
        headers={"jwk": evil.key.public_jwk()}, iss=idp.issuer
    ),
    "embedded jwk under the victim kid": lambda idp, evil: evil.token(
        headers={"jwk": evil.key.public_jwk(), "kid": idp.key.kid}, iss=idp.issuer
    ),
    "x5c certificate of the attacker": lambda idp, evil: evil.token(
        headers={"x5c": [self_signed_x5c(evil)], "kid": idp.key.kid}, iss=idp.issuer
    ),
    "crit exp": lambda idp, _: idp.token(headers={"crit": ["exp"], "exp": 1}),
    "crit b64": lambda idp, _: idp.token(headers={"crit": ["b64"], "b64": True}),
    "crit unknown extension": lambda idp, _: idp.token(headers={"crit": ["urn:x"], "urn:x": 1}),
    "expired": lambda idp, _: idp.token(exp=now() - 3600),
    "expired beyond the leeway": lambda idp, _: idp.token(exp=now() - 45),
    "nbf in the future": lambda idp, _: idp.token(nbf=now() + 3600),
    "iat in the future": lambda idp, _: idp.token(iat=now() + 3600),
    "exp missing": lambda idp, _: idp.token(exp=None),
    "exp not a number": lambda idp, _: idp.token(exp="tomorrow"),
    "iat missing": lambda idp, _: idp.token(iat=None),
    "sub missing": lambda idp, _: idp.token(sub=None),
    "sub not a string": lambda idp, _: idp.token(sub=42),
    "sub empty": lambda idp, _: idp.token(sub=""),
    "sub with a NUL": lambda idp, _: idp.token(sub="user\x00-1"),
    "sub too long": lambda idp, _: idp.token(sub="u" * 256),
    "iss wrong": lambda idp, _: idp.token(iss="https://evil.example/tenant"),
    "iss with an extra path suffix": lambda idp, _: idp.token(iss=idp.issuer + "/extra"),
    "iss with a trailing slash": lambda idp, _: idp.token(iss=idp.issuer + "/"),
    "iss not a string": lambda idp, _: idp.token(iss=123),
    "iss a list": lambda idp, _: idp.token(iss=[idp.issuer]),
    "iss missing": lambda idp, _: idp.token(iss=None),
    "aud wrong": lambda idp, _: idp.token(aud="other-api"),
    "aud missing": lambda idp, _: idp.token(aud=None),
    "aud list without ours": lambda idp, _: idp.token(aud=["a", "b"]),
    "aud not a string": lambda idp, _: idp.token(aud=7),
    "token from another issuer": lambda _, evil: evil.token(aud="api"),
    "another issuer's iss on our key": lambda idp, evil: idp.token(iss=evil.issuer),
    "tampered payload": lambda idp, _: tampered_payload(idp),
    "tampered signature": lambda idp, _: tampered_signature(idp),
    "signature stripped": lambda idp, _: idp.token().rsplit(".", 1)[0] + ".",
    "signature of another key": lambda idp, _: sign_raw(
        {"alg": "RS256", "kid": idp.key.kid}, idp.claims(), rsa_key(3)
    ),
    "two segments": lambda idp, _: idp.token().rsplit(".", 1)[0],
    "four segments": lambda idp, _: idp.token() + ".e30",
    "bad base64": lambda *_: "!!!.@@@.###",
    "header not JSON": lambda idp, _: "bm90IGpzb24." + idp.token().split(".", 1)[1],
    "header a JSON array": lambda idp, _: b64url(b'["RS256"]') + "." + idp.token().split(".", 1)[1],
    "payload a JSON array": lambda idp, _: signed(idp, {"alg": "RS256"}, b"[1, 2, 3]"),
    "payload deeply nested": lambda idp, _: signed(
        idp, {"alg": "RS256"}, nested(json.dumps(idp.claims()).encode()[:-1] + b", ", 2400)
    ),
    "header deeply nested": lambda idp, _: sign_raw(
        nested(f'{{"alg": "RS256", "kid": "{idp.key.kid}", '.encode(), 2000),
        idp.claims(),
        idp.key.private,
        "RS256",
    ),
    "100 KB token": lambda idp, _: idp.token(padding="x" * 100_000),
    # Repeated names: a parser in front that reads the first `sub` sees someone else.
    "sub twice": lambda idp, _: signed(idp, {"alg": "RS256"}, with_repeated_sub(idp)),
    "alg twice in the header": lambda idp, _: sign_raw(
        f'{{"alg": "RS256", "kid": "{idp.key.kid}", "alg": "RS256"}}'.encode(),
        idp.claims(),
        idp.key.private,
        "RS256",
    ),
    # NumericDate is a JSON number (RFC 7519), not a string that looks like one.
    "exp a numeric string": lambda idp, _: idp.token(exp=str(now() + 300)),
    "iat a numeric string": lambda idp, _: idp.token(iat=str(now())),
    "nbf a numeric string": lambda idp, _: idp.token(nbf=str(now() - 10)),
    "iat true": lambda idp, _: idp.token(iat=True),
    # ID tokens, by their shape, are not access tokens.
    "ID token (nonce)": lambda idp, _: idp.token(nonce="n-0S6_WzA2Mj"),
    "ID token (at_hash)": lambda idp, _: idp.token(at_hash="77QmUPtjPfzWtF2AnpK9RQ"),
    "ID token (typ claim ID, Keycloak)": lambda idp, _: idp.token(typ="ID"),
    "logout token (typ header)": lambda idp, _: idp.token(headers={"typ": "logout+jwt"}),
    "typ header not a string": lambda idp, _: idp.token(headers={"typ": ["JWT"]}),
    "a lifetime of a century": lambda idp, _: idp.token(exp=now() + 100 * 365 * 86_400),
}


async def test_a_valid_token_is_accepted(oidc_client: AsyncClient, idp: IdentityProvider) -> None:
    response = await oidc_client.get(ME, headers=bearer(idp.token(sub="alice")))
    assert response.status_code == 200, response.text
    assert response.json()["subject"] == "alice"
    assert response.json()["provider"] == "oidc"


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
async def test_attacks_are_rejected_with_401(
    oidc_client: AsyncClient, idp: IdentityProvider, attacker: IdentityProvider, attack: Attack
) -> None:
    fetched_before = attacker.jwks_fetches + attacker.discovery_fetches
    response = await oidc_client.get(ME, headers=bearer(attack(idp, attacker)))
    assert_unauthorized(response)
    assert attacker.jwks_fetches + attacker.discovery_fetches == fetched_before
    assert len(response.json()["error"]["message"]) < 40


# What the 401 says for the checks a caller can act on.
MESSAGES: dict[str, tuple[Attack, str]] = {
    "repeated claim": (ATTACKS["sub twice"], "The token has duplicate claims."),
    "repeated header member": (
        ATTACKS["alg twice in the header"],
        "The token has duplicate claims.",
    ),
    "string exp": (ATTACKS["exp a numeric string"], "The token's exp is not a number."),
    "nonce": (ATTACKS["ID token (nonce)"], "The token is not an access token."),
    "typ header": (ATTACKS["logout token (typ header)"], "The token is not an access token."),
    "lifetime": (ATTACKS["a lifetime of a century"], "The token's lifetime is too long."),
    "size": (ATTACKS["100 KB token"], "The token is too large."),
}


@pytest.mark.parametrize(("attack", "message"), MESSAGES.values(), ids=MESSAGES.keys())
async def test_refusals_say_what_is_wrong(
    oidc_client: AsyncClient,
    idp: IdentityProvider,
    attacker: IdentityProvider,
    attack: Attack,
    message: str,
) -> None:
    response = await oidc_client.get(ME, headers=bearer(attack(idp, attacker)))
    assert_unauthorized(response)
    assert response.json()["error"]["message"] == message


ACCEPTED: dict[str, Callable[[IdentityProvider], str]] = {
    "typ at+jwt (RFC 9068)": lambda idp: idp.token(headers={"typ": "at+jwt"}),
    "typ application/at+jwt": lambda idp: idp.token(headers={"typ": "application/at+jwt"}),
    "typ jwt, lower case": lambda idp: idp.token(headers={"typ": "jwt"}),
    "no typ header": lambda idp: idp.token(headers={"typ": None}),
    "Keycloak's typ claim Bearer": lambda idp: idp.token(typ="Bearer"),
    "a lifetime of a day": lambda idp: idp.token(exp=now() + 86_400 - 60, iat=now() - 60),
    "11 KB of groups (Entra, Keycloak)": lambda idp: idp.token(
        groups=[str(uuid.UUID(int=n)) for n in range(200)]
    ),
    "float dates": lambda idp: idp.token(iat=now() + 0.5, exp=now() + 300.25),
}


@pytest.mark.parametrize("make", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_legitimate_access_tokens_are_still_accepted(
    oidc_client: AsyncClient, idp: IdentityProvider, make: Callable[[IdentityProvider], str]
) -> None:
    response = await oidc_client.get(ME, headers=bearer(make(idp)))
    assert response.status_code == 200, response.text


@asynccontextmanager
async def oidc_app(
    database_url: str, idp: IdentityProvider, **overrides: Any
) -> AsyncIterator[AsyncClient]:
    async with running_app(oidc_settings(database_url, idp, **overrides)) as (_, client):
        yield client


async def test_strict_mode_requires_at_jwt(
    database_url: str, clean_db: None, idp: IdentityProvider
) -> None:
    async with oidc_app(database_url, idp, OIDC_REQUIRE_AT_JWT="true") as client:
        for typ in ("at+jwt", "application/AT+JWT"):
            response = await client.get(ME, headers=bearer(idp.token(headers={"typ": typ})))
            assert response.status_code == 200, typ
        for wrong_typ in ("JWT", None):
            response = await client.get(ME, headers=bearer(idp.token(headers={"typ": wrong_typ})))
            assert_unauthorized(response)
            assert response.json()["error"]["message"] == "The token is not an access token."


async def test_the_size_and_lifetime_limits_are_settings(
    database_url: str, clean_db: None, idp: IdentityProvider
) -> None:
    century = idp.token(exp=now() + 100 * 365 * 86_400)
    padded = idp.token(padding="x" * 2_000)
    async with oidc_app(
        database_url, idp, AUTH_MAX_TOKEN_LIFETIME=0, AUTH_MAX_TOKEN_BYTES=2048
    ) as client:
        assert (await client.get(ME, headers=bearer(century))).status_code == 200
        too_large = await client.get(ME, headers=bearer(padded))
    assert_unauthorized(too_large)
    assert too_large.json()["error"]["message"] == "The token is too large."

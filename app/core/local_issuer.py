"""The local identity provider: in development and tests the API is its own issuer.

The signing key comes from `LOCAL_AUTH_PRIVATE_KEY` or, when that is unset, from
`LOCAL_AUTH_KEY_FILE`, which is generated (mode 0600) on first use, so `make token` and
`make dev` share one key. Only the public half leaves this module: it is published at
`/.well-known/jwks.json` and handed to the verifier's key store as a JWKS document,
so local tokens are checked by exactly the code that checks every other provider's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.core.config import ConfigError, Settings

logger = logging.getLogger(__name__)

LOCAL_ISSUER = "urn:local-auth"
LOCAL_AUDIENCE = "urn:local-auth:api"
LocalAlgorithm = Literal["RS256", "ES256"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_MIN_RSA_BITS = 2048
# RFC 7638: the members that identify a public key, per key type.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, used as its `kid`."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def generate_private_key_pem(algorithm: LocalAlgorithm) -> bytes:
    key: PrivateKey
    if algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=_MIN_RSA_BITS)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_key_type(key: object, algorithm: LocalAlgorithm) -> PrivateKey:
    if algorithm == "RS256" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"an RSA key must have at least {_MIN_RSA_BITS} bits")
        return key
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    expected = "an RSA" if algorithm == "RS256" else "a P-256 EC"
    raise ValueError(f"LOCAL_AUTH_ALGORITHM={algorithm} needs {expected} private key")


def _load_private_key(pem: bytes, algorithm: LocalAlgorithm, source: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
        return _check_key_type(key, algorithm)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid configuration:\n  {source}: {exc}") from None


def read_or_create_key_file(path: Path, algorithm: LocalAlgorithm) -> bytes:
    """The PEM in `path`, generating it first when missing (safe when processes race)."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(generate_private_key_pem(algorithm))
    try:
        os.link(staging, path)  # fails if another process created the file first
        logger.info("generated a local signing key in %s", path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()
    return path.read_bytes()


class LocalIssuer:
    """Signs tokens with the local key and publishes its public JWKS."""

    def __init__(self, private_key: PrivateKey, algorithm: LocalAlgorithm) -> None:
        self.algorithm = algorithm
        self._private_key = private_key
        public = jwt.get_algorithm_by_name(algorithm).to_jwk(private_key.public_key(), as_dict=True)
        self.kid = jwk_thumbprint(public)
        self.public_jwk: dict[str, Any] = {
            **public,
            "kid": self.kid,
            "alg": algorithm,
            "use": "sig",
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalIssuer:
        algorithm = settings.LOCAL_AUTH_ALGORITHM
        if settings.LOCAL_AUTH_PRIVATE_KEY is not None:
            pem = settings.LOCAL_AUTH_PRIVATE_KEY.get_secret_value().encode()
            key = _load_private_key(pem, algorithm, "LOCAL_AUTH_PRIVATE_KEY")
        else:
            path = Path(settings.LOCAL_AUTH_KEY_FILE)
            try:
                pem = read_or_create_key_file(path, algorithm)
            except OSError as exc:
                raise ConfigError(f"invalid configuration:\n  LOCAL_AUTH_KEY_FILE: {exc}") from None
            key = _load_private_key(pem, algorithm, f"LOCAL_AUTH_KEY_FILE ({path})")
        return cls(key, algorithm)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.public_jwk)]}

    def issue_token(
        self,
        subject: str,
        *,
        email: str | None = None,
        roles: Iterable[str] = (),
        tenant_id: str | None = None,
        ttl: int = 3600,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed access token for `subject`, valid for `ttl` seconds."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": LOCAL_ISSUER,
            "aud": LOCAL_AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + ttl,
            "roles": sorted(set(roles)),
        }
        if email:
            claims["email"] = email
        if tenant_id:
            claims["tenant_id"] = tenant_id
        claims.update(extra_claims or {})
        return jwt.encode(
            claims,
            self._private_key,
            algorithm=self.algorithm,
            headers={"kid": self.kid, "typ": "at+jwt"},  # RFC 9068: an access token
        )

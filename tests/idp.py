"""A real identity provider for tests: an HTTP server on 127.0.0.1 (random port) serving
an OpenID discovery document and a JWKS, with keys it can rotate, fetch counters, and
fault modes (HTTP 500, slow, malformed JSON, oversized body). It also signs tokens,
including deliberately broken ones, with `sign_raw`."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.core.config import Settings
from tests.support import make_settings

Mode = Literal["ok", "error", "slow", "malformed", "huge"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def rsa_key(index: int) -> rsa.RSAPrivateKey:
    """The index-th RSA test key of this run (generated once: RSA generation is slow)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(index: int) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    key: PrivateKey | bytes | None,
    alg: str | None = None,
) -> str:
    """A compact JWS over exactly this header and payload: anything goes, for attacks.

    `header` and `payload` may be raw bytes (not even JSON); `key` bytes mean an HMAC
    secret; None means no signature (alg=none)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    signing_input = f"{b64url(head)}.{b64url(body)}".encode()
    if alg is None:
        assert isinstance(header, dict), "pass alg with a raw header"
        alg = str(header.get("alg"))
    if key is None:
        signature = b""
    elif isinstance(key, bytes):
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
        signature = hmac.new(key, signing_input, digest).digest()
    else:
        signature = jwt.get_algorithm_by_name(alg).sign(signing_input, key)
    return f"{signing_input.decode()}.{b64url(signature)}"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    def public_jwk(self, *, with_alg: bool = True) -> dict[str, Any]:
        jwk: dict[str, Any] = jwt.get_algorithm_by_name(self.alg).to_jwk(
            self.private.public_key(), as_dict=True
        )
        jwk.update({"kid": self.kid, "use": "sig"})
        if with_alg:
            jwk["alg"] = self.alg
        return jwk


def new_key(alg: str = "RS256", index: int = 0) -> SigningKey:
    private: PrivateKey = ec_key(index) if alg.startswith("ES") else rsa_key(index)
    return SigningKey(kid=f"key-{uuid.uuid4().hex[:12]}", alg=alg, private=private)


class IdentityProvider:
    """`async with IdentityProvider(issuer_path="/realms/demo") as idp: ...`"""

    def __init__(
        self,
        *,
        issuer_path: str = "",
        jwks_path: str | None = None,
        audience: str | None = "api",
        keys: list[SigningKey] | None = None,
        jwks_with_alg: bool = True,
    ) -> None:
        self.issuer_path = issuer_path
        self.jwks_path = jwks_path or f"{issuer_path.rstrip('/')}/.well-known/jwks.json"
        self.audience = audience
        self.keys = keys if keys is not None else [new_key("RS256", 0)]
        self.jwks_with_alg = jwks_with_alg
        self.discovery_issuer: str | None = None  # override what discovery claims
        self.mode: Mode = "ok"
        self.slow_seconds = 10.0
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._requested = asyncio.Condition()
        self.base_url = ""

    @property
    def issuer(self) -> str:
        return self.base_url + self.issuer_path

    @property
    def jwks_url(self) -> str:
        return self.base_url + self.jwks_path

    @property
    def key(self) -> SigningKey:
        return self.keys[0]

    async def __aenter__(self) -> IdentityProvider:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await self._server.wait_closed()

    def rotate(self, alg: str = "RS256", index: int = 1, *, keep_old: bool = True) -> SigningKey:
        """Publish a new key first in the set; the old ones stay unless keep_old=False."""
        key = new_key(alg, index)
        self.keys = [key, *(self.keys if keep_old else [])]
        return key

    async def wait_for_jwks_fetches(self, count: int) -> None:
        """Return once the JWKS has been requested `count` times in all."""
        async with self._requested:
            await self._requested.wait_for(lambda: self.jwks_fetches >= count)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": "user-1", "iat": now, "exp": now + 300}
        if self.audience is not None:
            claims["aud"] = self.audience
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self, key: SigningKey | None = None, *, headers: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A correctly signed token; claims set to None are left out."""
        key = key or self.key
        header = {"alg": key.alg, "typ": "JWT", "kid": key.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return sign_raw(header, self.claims(**claims), key.private)

    def _jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk(with_alg=self.jwks_with_alg) for key in self.keys]}

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def _body(self, path: str) -> tuple[int, bytes]:
        if path.endswith("/.well-known/openid-configuration"):
            self.discovery_fetches += 1
            document = self._discovery()
        elif path == self.jwks_path:
            self.jwks_fetches += 1
            document = self._jwks()
        else:
            return 404, b'{"error": "not found"}'
        if self.mode == "error":
            return 500, b'{"error": "internal"}'
        if self.mode == "malformed":
            return 200, b'{"keys": [unterminated'
        if self.mode == "huge":
            return 200, b'{"keys": [], "padding": "' + b"x" * (1024 * 1024) + b'"}'
        return 200, json.dumps(document).encode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            path = request_line.split(b" ")[1].decode() if request_line else "/"
            self.paths.append(path)
            status, body = self._body(path)
            async with self._requested:
                self._requested.notify_all()
            if self.mode == "slow":
                await asyncio.sleep(self.slow_seconds)
            head = (
                f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()


def oidc_settings(database_url: str, idp: IdentityProvider, **overrides: Any) -> Settings:
    """Test settings for AUTH_PROVIDER=oidc trusting `idp` (audience "api", discovery)."""
    values = {
        "AUTH_PROVIDER": "oidc",
        "OIDC_ISSUER": idp.issuer,
        "OIDC_AUDIENCE": "api",
        "AUTH_HTTP_TIMEOUT": 2.0,
        **overrides,
    }
    return make_settings(database_url, **values)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}

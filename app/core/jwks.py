"""JSON Web Key sets: parsing with limits, fetching over HTTP, and the in-memory cache.

`parse_jwks` turns a JWKS document into a `KeySet` of ready-to-use `PyJWK` objects,
indexed by `kid` and algorithm, so no request ever parses key material. A key is only
kept for the algorithms the provider allows and its key type supports, which is what
makes algorithm confusion (HS256 signed with a public key, ES256 against an RSA key)
impossible by construction. Symmetric keys are accepted only when configured locally
("pinned"), never from the network.

`KeyStore` holds one provider's keys: pinned keys (a configured PEM or shared secret,
matched whatever the token's `kid`), plus a remote JWKS fetched with httpx. Remote keys
are refreshed after `ttl`; an unknown `kid` triggers a refetch at most once per
`cooldown`, and concurrent misses share one fetch. A failed fetch keeps the last good
keys, but only for `max_stale` seconds after the last successful fetch: past that, while
fetches keep failing, they are dropped. With no keys, `find` raises
`ServiceUnavailableError` (503).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from jwt import PyJWK, PyJWTError

from app.core import metrics
from app.core.exceptions import ServiceUnavailableError

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_KEYS = 64
MAX_KID_LENGTH = 256
_KEY_TYPE_ALGORITHMS: dict[tuple[str, str | None], frozenset[str]] = {
    ("RSA", None): frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    ("EC", "P-256"): frozenset({"ES256"}),
    ("EC", "P-384"): frozenset({"ES384"}),
    ("EC", "P-521"): frozenset({"ES512"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
    ("oct", None): frozenset({"HS256", "HS384", "HS512"}),
}


class JwksError(ValueError):
    """A JWKS or discovery document that cannot be used."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """Parsed verification keys: `by_kid[kid][alg]`, plus pinned keys for any `kid`."""

    by_kid: Mapping[str, Mapping[str, PyJWK]] = field(default_factory=dict)
    pinned: Mapping[str, PyJWK] = field(default_factory=dict)

    def find(self, kid: str | None, alg: str) -> PyJWK | None:
        key = self.pinned.get(alg)
        if key is None and kid is not None:
            key = self.by_kid.get(kid, {}).get(alg)
        return key

    def knows(self, kid: str) -> bool:
        return kid in self.by_kid


def _algorithms_for(jwk: Mapping[str, Any], allowed: frozenset[str]) -> frozenset[str]:
    kty, curve, declared = jwk.get("kty"), jwk.get("crv"), jwk.get("alg")
    if not isinstance(kty, str) or not all(isinstance(v, str | None) for v in (curve, declared)):
        return frozenset()  # a malformed key is skipped; the rest of the set stays usable
    supported = _KEY_TYPE_ALGORITHMS.get((kty, curve if kty in {"EC", "OKP"} else None))
    if supported is None:
        return frozenset()
    if declared is not None:
        return frozenset({declared}) & supported & allowed
    return supported & allowed


def _usable(jwk: object, *, pinned: bool) -> bool:
    if not isinstance(jwk, dict):
        return False
    if jwk.get("use", "sig") != "sig":
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    if pinned:
        return True
    kid = jwk.get("kid")
    return jwk.get("kty") != "oct" and isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH


def _parse_key(jwk: dict[str, Any], allowed: frozenset[str]) -> dict[str, PyJWK]:
    parsed = {}
    for alg in _algorithms_for(jwk, allowed):
        try:
            parsed[alg] = PyJWK(jwk, alg)
        except (PyJWTError, ValueError, TypeError) as exc:
            logger.warning("skipping JWKS key %r for %s: %s", jwk.get("kid"), alg, exc)
    return parsed


def parse_jwks(document: object, algorithms: Iterable[str], *, pinned: bool = False) -> KeySet:
    """Build a `KeySet` from a JWKS document, keeping only usable keys for `algorithms`."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS document (no 'keys' list)")
    keys: list[object] = document["keys"]
    if len(keys) > MAX_KEYS:
        raise JwksError(f"the JWKS holds {len(keys)} keys; at most {MAX_KEYS} are accepted")
    allowed = frozenset(algorithms)
    by_kid: dict[str, dict[str, PyJWK]] = {}
    any_kid: dict[str, PyJWK] = {}
    for jwk in keys:
        if not _usable(jwk, pinned=pinned):
            continue
        assert isinstance(jwk, dict)  # noqa: S101  (narrowed by _usable)
        parsed = _parse_key(jwk, allowed)
        if pinned:
            any_kid = {**parsed, **any_kid}
        elif parsed:
            by_kid[jwk["kid"]] = {**parsed, **by_kid.get(jwk["kid"], {})}
    return KeySet(by_kid, any_kid)


def _check_url(url: object, allow_http: bool) -> str:
    schemes = ("https://", "http://") if allow_http else ("https://",)
    if isinstance(url, str) and url.lower().startswith(schemes):
        return url
    raise JwksError(f"{url!r} is not an {'http(s)' if allow_http else 'https'} URL")


class JwksFetcher:
    """Fetches a JWKS document, discovering its URL from the issuer when none is given."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        issuer: str,
        jwks_url: str | None = None,
        discovery_url: str | None = None,
        allow_http: bool = False,
    ) -> None:
        if jwks_url is None and discovery_url is None:
            raise ValueError("either jwks_url or discovery_url is required")
        self.client = client
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.discovery_url = discovery_url
        self.allow_http = allow_http

    async def _get_json(self, url: str) -> object:
        # Every URL, configured or discovered: plain http only where it is allowed.
        async with self.client.stream("GET", _check_url(url, self.allow_http)) as response:
            if response.status_code != 200:
                raise JwksError(f"{url} answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise JwksError(f"{url} did not return JSON") from exc

    async def _discover(self, url: str) -> str:
        document = await self._get_json(url)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            found = document.get("issuer") if isinstance(document, dict) else None
            raise JwksError(f"discovery document issuer {found!r} is not {self.issuer!r}")
        return _check_url(document.get("jwks_uri"), self.allow_http)

    async def fetch(self) -> object:
        if self.jwks_url is None:
            assert self.discovery_url is not None  # noqa: S101  (checked in __init__)
            self.jwks_url = await self._discover(self.discovery_url)
        return await self._get_json(self.jwks_url)


class KeyStore:
    """One provider's verification keys: pinned ones, plus a cached remote JWKS."""

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        pinned: KeySet | None = None,
        document: object = None,
        fetcher: JwksFetcher | None = None,
        ttl: float = 600.0,
        cooldown: float = 30.0,
        timeout: float = 5.0,
        max_stale: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.algorithms = frozenset(algorithms)
        self.pinned = pinned or KeySet()
        self.fetcher = fetcher
        # `document`: keys known up front (the local provider's own JWKS); they never expire.
        self.remote = parse_jwks(document, self.algorithms) if document is not None else None
        self.ttl = ttl
        self.cooldown = cooldown
        self.timeout = timeout
        self.max_stale = max_stale
        self.clock = clock
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._running: asyncio.Task[None] | None = None
        self._last_fetch_ok = True

    def start(self) -> None:
        """Begin the first fetch in the background (start-up never waits for it)."""
        if self.fetcher is not None and self._running is None:
            self._launch()

    async def aclose(self) -> None:
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)
        if self.fetcher is not None:
            await self.fetcher.client.aclose()

    async def find(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key for a token header, or None when no key matches (an invalid token)."""
        key = self.pinned.find(None, alg)
        if key is not None or kid is None:
            return key
        if self.fetcher is not None:
            if self.remote is None or not self.remote.knows(kid):
                await self._refresh()
            elif self.clock() - self._fetched_at >= self.ttl:
                await self._refresh_expired()
            if self.remote is not None and self._too_stale():
                logger.error(
                    "JWKS unreachable for %.0f s (AUTH_JWKS_MAX_STALE); dropping the cached keys",
                    self.clock() - self._fetched_at,
                )
                self.remote = None
            if self.remote is None:
                raise ServiceUnavailableError(
                    "The identity provider is unreachable; try again shortly.",
                    headers={"Retry-After": str(max(1, math.ceil(self.cooldown)))},
                )
        return self.remote.find(kid, alg) if self.remote is not None else None

    async def _refresh(self) -> None:
        """Wait for a fetch: the running one, or a new one if the cooldown allows it."""
        if self._running is None and self.clock() - self._attempted_at >= self.cooldown:
            self._launch()
        if self._running is not None:
            await asyncio.shield(self._running)

    async def _refresh_expired(self) -> None:
        # While the provider answers, expired keys are replaced before use, so a key it
        # removed stops working. Once a fetch has failed the cached keys are all there
        # is: keep serving them and retry in the background, without making requests wait,
        # until they are `max_stale` old; then a request waits for the retry again.
        if self._last_fetch_ok or self._too_stale():
            await self._refresh()
        elif self._running is None and self.clock() - self._attempted_at >= self.cooldown:
            self._launch()

    def _too_stale(self) -> bool:
        """Fetches are failing and the last good keys are older than `max_stale`."""
        return not self._last_fetch_ok and self.clock() - self._fetched_at >= self.max_stale

    def _launch(self) -> None:
        self._attempted_at = self.clock()
        self._running = asyncio.create_task(self._fetch())
        self._running.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._running is task:
            self._running = None

    async def _fetch(self) -> None:
        assert self.fetcher is not None  # noqa: S101  (only launched with a fetcher)
        try:
            async with asyncio.timeout(self.timeout):
                document = await self.fetcher.fetch()
            keys = parse_jwks(document, self.algorithms)
        except (httpx.HTTPError, TimeoutError, JwksError) as exc:
            kept = "keeping the cached keys" if self.remote is not None else "no keys cached"
            logger.warning("JWKS fetch failed (%s: %s); %s", type(exc).__name__, exc, kept)
            self._last_fetch_ok = False
            metrics.JWKS_FETCHES.labels("error").inc()
            return
        except Exception:
            logger.exception("JWKS fetch failed unexpectedly; keeping the cached keys")
            self._last_fetch_ok = False
            metrics.JWKS_FETCHES.labels("error").inc()
            return
        metrics.JWKS_FETCHES.labels("ok").inc()
        self._last_fetch_ok = True
        self.remote = keys
        self._fetched_at = self.clock()
        logger.info("JWKS fetched: %d keys", len(keys.by_kid))

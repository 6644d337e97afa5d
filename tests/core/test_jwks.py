"""The JWKS key store against a real loopback identity provider, with a controlled clock."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from app.core.exceptions import ServiceUnavailableError
from app.core.jwks import MAX_KEYS, JwksFetcher, KeyStore, parse_jwks
from tests.idp import IdentityProvider, Mode, SigningKey, new_key
from tests.support import Clock


@asynccontextmanager
async def key_store(
    idp: IdentityProvider,
    clock: Clock,
    *,
    ttl: float = 600,
    cooldown: float = 30,
    timeout: float = 5.0,
    discover: bool = False,
    allow_http: bool = True,
    max_stale: float = 86_400,
) -> AsyncIterator[KeyStore]:
    fetcher = JwksFetcher(
        httpx.AsyncClient(timeout=timeout),
        issuer=idp.issuer,
        jwks_url=None if discover else idp.jwks_url,
        discovery_url=f"{idp.issuer.rstrip('/')}/.well-known/openid-configuration",
        allow_http=allow_http,
    )
    store = KeyStore(
        algorithms={"RS256", "ES256"},
        fetcher=fetcher,
        ttl=ttl,
        cooldown=cooldown,
        timeout=timeout,
        max_stale=max_stale,
        clock=clock,
    )
    try:
        async with asyncio.timeout(30):  # a hang is a failure, not a stuck suite
            yield store
    finally:
        await store.aclose()


@pytest.fixture
async def idp() -> AsyncIterator[IdentityProvider]:
    async with IdentityProvider() as server:
        yield server


def random_kid() -> str:
    return uuid.uuid4().hex


async def test_a_flood_of_unknown_kids_costs_one_fetch_per_cooldown(idp: IdentityProvider) -> None:
    clock = Clock()
    async with key_store(idp, clock, cooldown=30) as store:
        assert await store.find(idp.key.kid, "RS256") is not None
        assert idp.jwks_fetches == 1
        clock.advance(31)
        found = await asyncio.gather(*(store.find(random_kid(), "RS256") for _ in range(200)))
        assert found == [None] * 200
        assert idp.jwks_fetches == 2
        clock.advance(29)
        await asyncio.gather(*(store.find(random_kid(), "RS256") for _ in range(200)))
        assert idp.jwks_fetches == 2


async def test_concurrent_misses_share_one_fetch(idp: IdentityProvider) -> None:
    async with key_store(idp, Clock(), cooldown=0) as store:
        found = await asyncio.gather(*(store.find(idp.key.kid, "RS256") for _ in range(50)))
        assert all(key is not None for key in found)
        assert idp.jwks_fetches == 1


async def test_a_rotated_key_is_accepted_after_one_refetch(idp: IdentityProvider) -> None:
    clock = Clock()
    async with key_store(idp, clock, cooldown=30) as store:
        old = idp.key
        assert await store.find(old.kid, "RS256") is not None
        new = idp.rotate()
        clock.advance(5)
        assert await store.find(new.kid, "RS256") is None  # within the cooldown: no refetch
        assert idp.jwks_fetches == 1
        clock.advance(30)
        assert await store.find(new.kid, "RS256") is not None
        assert await store.find(old.kid, "RS256") is not None
        assert idp.jwks_fetches == 2


async def test_a_removed_key_stops_working_once_the_cache_expires(idp: IdentityProvider) -> None:
    clock = Clock()
    async with key_store(idp, clock, ttl=600, cooldown=30) as store:
        old = idp.key
        assert await store.find(old.kid, "RS256") is not None
        idp.rotate(keep_old=False)
        clock.advance(599)
        assert await store.find(old.kid, "RS256") is not None  # cached, not refetched
        assert idp.jwks_fetches == 1
        clock.advance(1)
        assert await store.find(old.kid, "RS256") is None
        assert idp.jwks_fetches == 2


@pytest.mark.parametrize("mode", ["error", "malformed", "huge", "slow"])
async def test_a_failing_jwks_keeps_the_last_good_keys(idp: IdentityProvider, mode: Mode) -> None:
    clock = Clock()
    async with key_store(idp, clock, ttl=60, timeout=0.5) as store:
        assert await store.find(idp.key.kid, "RS256") is not None
        idp.mode = mode
        clock.advance(61)
        assert await store.find(idp.key.kid, "RS256") is not None
        assert idp.jwks_fetches == 2


async def test_stale_keys_are_served_without_waiting_on_a_slow_provider(
    idp: IdentityProvider,
) -> None:
    clock = Clock()
    async with key_store(idp, clock, ttl=60, timeout=20) as store:
        assert await store.find(idp.key.kid, "RS256") is not None
        idp.mode = "error"
        clock.advance(61)
        assert await store.find(idp.key.kid, "RS256") is not None  # waited: a fast failure
        idp.mode, idp.slow_seconds = "slow", 60
        clock.advance(30)
        async with asyncio.timeout(10):  # waiting on the 20 s fetch would overrun this
            assert await store.find(idp.key.kid, "RS256") is not None
            await idp.wait_for_jwks_fetches(3)  # the retry runs in the background


@pytest.mark.parametrize("mode", ["error", "malformed", "huge", "slow"])
async def test_no_cached_keys_and_a_failing_jwks_is_a_503(
    idp: IdentityProvider, mode: Mode
) -> None:
    idp.mode = mode
    async with key_store(idp, Clock(), timeout=0.5) as store:
        with pytest.raises(ServiceUnavailableError) as caught:
            await store.find(idp.key.kid, "RS256")
        assert caught.value.headers["Retry-After"] == "30"
        with pytest.raises(ServiceUnavailableError):
            await store.find(idp.key.kid, "RS256")
        assert idp.jwks_fetches == 1  # the second miss waits for the cooldown


async def test_keys_are_dropped_once_the_provider_is_unreachable_past_the_stale_limit(
    idp: IdentityProvider,
) -> None:
    """Blocking the JWKS must not keep a key the provider removed valid forever."""
    clock = Clock()
    async with key_store(idp, clock, ttl=60, cooldown=30, max_stale=3_600) as store:
        assert await store.find(idp.key.kid, "RS256") is not None
        idp.mode = "error"
        clock.advance(3_599)
        assert await store.find(idp.key.kid, "RS256") is not None  # stale, still served
        clock.advance(1)
        with pytest.raises(ServiceUnavailableError):
            await store.find(idp.key.kid, "RS256")
        clock.advance(30)
        with pytest.raises(ServiceUnavailableError):
            await store.find(idp.key.kid, "RS256")  # nothing cached comes back
        idp.mode = "ok"
        clock.advance(30)
        assert await store.find(idp.key.kid, "RS256") is not None


async def test_the_store_recovers_when_the_jwks_comes_back(idp: IdentityProvider) -> None:
    clock = Clock()
    idp.mode = "error"
    async with key_store(idp, clock) as store:
        with pytest.raises(ServiceUnavailableError):
            await store.find(idp.key.kid, "RS256")
        idp.mode = "ok"
        clock.advance(30)
        assert await store.find(idp.key.kid, "RS256") is not None


async def test_too_many_keys_are_refused(idp: IdentityProvider) -> None:
    idp.keys = [SigningKey(f"k{i}", "RS256", idp.key.private) for i in range(MAX_KEYS + 1)]
    async with key_store(idp, Clock()) as store:
        with pytest.raises(ServiceUnavailableError):
            await store.find("k1", "RS256")


@pytest.mark.parametrize("discover", [False, True], ids=["jwks url", "discovery"])
async def test_plain_http_is_never_fetched_where_only_https_is_allowed(
    idp: IdentityProvider, discover: bool
) -> None:
    async with key_store(idp, Clock(), allow_http=False, discover=discover) as store:
        with pytest.raises(ServiceUnavailableError):
            await store.find(idp.key.kid, "RS256")
    assert (idp.discovery_fetches, idp.jwks_fetches) == (0, 0)


async def test_discovery_reads_jwks_uri_when_the_issuer_matches_exactly() -> None:
    async with IdentityProvider(issuer_path="/realms/demo", jwks_path="/certs") as idp:
        async with key_store(idp, Clock(), discover=True) as store:
            assert await store.find(idp.key.kid, "RS256") is not None
        assert (idp.discovery_fetches, idp.jwks_fetches) == (1, 1)


async def test_discovery_with_another_issuer_yields_no_keys() -> None:
    async with IdentityProvider(issuer_path="/") as idp:
        idp.discovery_issuer = idp.base_url  # no trailing slash: not the configured issuer
        async with key_store(idp, Clock(), discover=True) as store:
            with pytest.raises(ServiceUnavailableError):
                await store.find(idp.key.kid, "RS256")
        assert idp.jwks_fetches == 0


def test_parsed_keys_are_bound_to_their_type_and_the_allow_list() -> None:
    rsa, ec = new_key("RS256"), new_key("ES256")
    bare = {**rsa.public_jwk(with_alg=False), "kid": "bare"}
    keys = parse_jwks(
        {
            "keys": [
                rsa.public_jwk(),
                ec.public_jwk(),
                bare,
                {**rsa.public_jwk(), "kid": "enc", "use": "enc"},
                {**rsa.public_jwk(), "kid": None},
                {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "hs"},
                {"kty": "RSA", "kid": "broken", "n": "AQAB"},
                {**rsa.public_jwk(), "kid": "alg-list", "alg": ["RS256"]},
                {**ec.public_jwk(), "kid": "crv-object", "crv": {"name": "P-256"}},
                {**rsa.public_jwk(), "kid": "kty-list", "kty": ["RSA"]},
                "not a key",
            ]
        },
        {"RS256", "PS256", "HS256"},
    )
    assert keys.find(rsa.kid, "RS256") is not None
    assert keys.find(rsa.kid, "ES256") is None  # an ES256 token against an RSA key
    assert keys.find(rsa.kid, "PS256") is None  # the JWK declares RS256
    assert keys.find(ec.kid, "ES256") is None  # ES256 is not allowed here
    assert keys.find("bare", "PS256") is not None  # no alg: every allowed RSA algorithm
    assert keys.find("bare", "HS256") is None
    malformed = ("enc", "hs", "broken", "alg-list", "crv-object", "kty-list")
    assert not any(keys.knows(kid) for kid in malformed)
    assert keys.find(None, "RS256") is None

"""`TRUSTED_PROXIES` is the one source of truth for the client's address and scheme."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

import pytest
from fastapi import FastAPI, Request
from httpx import ASGITransport, AsyncClient

from app.core.proxies import TrustedProxies
from app.main import create_app
from tests.support import WithLifespanState, make_settings

SQLITE = "sqlite+aiosqlite:///:memory:"


def scope_from(peer: str, forwarded: list[str], proto: bytes | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    if proto is not None:
        headers.append((b"x-forwarded-proto", proto))
    return {"type": "http", "client": (peer, 1234), "scheme": "http", "headers": headers}


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # untrusted peer: header ignored
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["1.1.1.1, 198.51.100.1, 10.0.0.7"], "198.51.100.1"),  # right-most untrusted
        ("10.0.0.1", ["1.1.1.1", "198.51.100.1"], "198.51.100.1"),  # several headers
        ("10.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, garbage"], "10.0.0.1"),  # the proxy wrote junk
        ("10.0.0.1", ["10.0.0.9, 10.0.0.8"], "10.0.0.9"),  # every hop trusted
        ("10.0.0.1", [], "10.0.0.1"),
        ("::ffff:10.0.0.1", ["2001:db8::1"], "2001:db8::1"),
    ],
)
def test_the_client_is_the_right_most_address_no_trusted_proxy_wrote(
    peer: str, forwarded: list[str], expected: str
) -> None:
    scope = scope_from(peer, forwarded)
    TrustedProxies([ip_network("10.0.0.0/8")]).apply(scope)
    assert scope["client"][0] == expected


@pytest.mark.parametrize(
    ("peer", "proto", "expected"),
    [
        ("10.0.0.1", b"https", "https"),
        ("10.0.0.1", b"http, HTTPS", "https"),  # the nearest proxy's word counts
        ("10.0.0.1", b"gopher", "http"),
        ("203.0.113.5", b"https", "http"),  # not from a trusted proxy
    ],
)
def test_the_scheme_comes_from_a_trusted_proxy_only(peer: str, proto: bytes, expected: str) -> None:
    scope = scope_from(peer, [], proto)
    TrustedProxies([ip_network("10.0.0.0/8")]).apply(scope)
    assert scope["scheme"] == expected


def echo_app(trusted: str) -> FastAPI:
    app = create_app(make_settings(SQLITE, TRUSTED_PROXIES=trusted))

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, str]:
        """The client and URL the app sees."""
        assert request.client is not None
        return {"client": request.client.host, "url": str(request.url_for("whoami"))}

    return app


@pytest.mark.parametrize(
    ("trusted", "expected_client", "expected_scheme"),
    [("", "127.0.0.1", "http"), ("127.0.0.1", "198.51.100.7", "https")],
)
async def test_the_app_applies_trusted_proxies_to_every_request(
    trusted: str, expected_client: str, expected_scheme: str
) -> None:
    """The server's own proxy-header handling is off (scripts/serve), so a spoofed
    header from an untrusted peer reaches the app untouched and is ignored there."""
    app = echo_app(trusted)
    async with app.router.lifespan_context(app) as state:
        transport = ASGITransport(
            app=WithLifespanState(app, dict(state or {})), client=("127.0.0.1", 5555)
        )
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get(
                "/whoami",
                headers={"x-forwarded-for": "198.51.100.7", "x-forwarded-proto": "https"},
            )
    assert response.json()["client"] == expected_client
    assert response.json()["url"].startswith(f"{expected_scheme}://")

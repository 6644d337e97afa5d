"""Who the client is behind reverse proxies: the one place `TRUSTED_PROXIES` is applied.

The server (uvicorn) runs with its own proxy-header handling off, so `scope["client"]`
arrives as the socket's peer. When that peer is a trusted proxy, the request
middleware replaces it with the right-most `X-Forwarded-For` address that is not
itself a trusted proxy (the left-most entries are whatever the client wrote), and
`scope["scheme"]` with the proxy's `X-Forwarded-Proto`. Everything after it (rate
limits, logs, redirects) reads the ordinary scope and sees the real client.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from starlette.types import Scope

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address
_SCHEMES = {b"http": "http", b"https": "https"}


def parse_ip(text: str) -> Address | None:
    try:
        address = ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """Rewrites the scope of requests that come through one of `networks`."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)

    def is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def apply(self, scope: Scope) -> None:
        """Put the real client (and scheme) in an HTTP `scope` if the peer is a trusted proxy."""
        client = scope.get("client")
        peer = parse_ip(client[0]) if client else None
        if peer is None or not self.is_trusted(peer):
            return
        forwarded: list[str] = []
        proto = b""
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.extend(value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.rsplit(b",", 1)[-1].strip().lower()
        scope["client"] = (str(self._client(peer, forwarded)), 0)
        if proto in _SCHEMES:
            scope["scheme"] = _SCHEMES[proto]

    def _client(self, peer: Address, forwarded: list[str]) -> Address:
        nearest = peer
        for hop in reversed(forwarded):
            address = parse_ip(hop)
            if address is None:
                break  # the proxy wrote something unreadable: trust nothing beyond it
            nearest = address
            if not self.is_trusted(address):
                break
        return nearest

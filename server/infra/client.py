"""The client's address: the peer, or what a trusted proxy says in ``X-Forwarded-For``.

Limits per client address (one-time codes, sign-ins, pairing) are only as good as the address.
A header any caller can write is believed only from the proxies a deployment names
(``REGULARS_TRUSTED_PROXIES``, CIDRs); the client is then the right-most address in the
header that is not itself a trusted proxy, because each proxy appends the peer it saw and
only the part our own proxies wrote can be trusted.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from typing import Any

__all__ = ["UNKNOWN_CLIENT", "client_address", "trusted_networks"]

UNKNOWN_CLIENT = "unknown"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def trusted_networks(cidrs: str) -> tuple[Network, ...]:
    """The networks of a comma-separated CIDR list (ValueError names a bad one)."""
    return tuple(
        ipaddress.ip_network(part.strip(), strict=False)
        for part in cidrs.split(",")
        if part.strip()
    )


def _is_trusted(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(scope: Any, trusted_proxies: str) -> str:
    """The address to count a request against (``scope`` is the ASGI scope)."""
    client = scope.get("client")
    peer = str(client[0]) if client else UNKNOWN_CLIENT
    networks = trusted_networks(trusted_proxies)
    if not networks or not _is_trusted(peer, networks):
        return peer
    forwarded: list[str] = [
        value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name == b"x-forwarded-for"
    ]
    hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer

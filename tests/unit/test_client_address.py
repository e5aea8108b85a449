"""The client address limits count against (server/infra/client.py): X-Forwarded-For only
from trusted proxies, and then the right-most hop that is not one of them."""

from __future__ import annotations

from typing import Any

from server.infra.client import client_address


def scope(peer: str, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 5000),
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


def test_without_trusted_proxies_the_peer_counts() -> None:
    assert client_address(scope("203.0.113.9", "1.2.3.4"), "") == "203.0.113.9"


def test_an_untrusted_peer_cannot_name_another_client() -> None:
    assert client_address(scope("203.0.113.9", "1.2.3.4"), "10.0.0.0/8") == "203.0.113.9"


def test_a_trusted_proxy_passes_the_client_on() -> None:
    trusted = "10.0.0.0/8, fd00::/8"
    assert client_address(scope("10.1.2.3", "198.51.100.7"), trusted) == "198.51.100.7"
    # A client that forges a first hop is still the hop our proxy saw.
    forged = scope("10.1.2.3", "1.1.1.1, 198.51.100.7, 10.4.4.4")
    assert client_address(forged, trusted) == "198.51.100.7"
    # Several headers read as one list, in order.
    assert client_address(scope("fd00::1", "1.1.1.1", "198.51.100.8"), trusted) == "198.51.100.8"
    # Nothing forwarded: the proxy itself.
    assert client_address(scope("10.1.2.3"), trusted) == "10.1.2.3"

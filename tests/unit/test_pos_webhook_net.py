"""The webhook SSRF guard (server/pos/webhook_net.py): which URLs an admin may set, which
addresses a delivery may connect to."""

from __future__ import annotations

import httpcore
import pytest

from server.pos.webhook_net import PublicOnlyBackend, is_public_address, url_refusal


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.9", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # the cloud's metadata service
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00::1", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
    ],
)
def test_only_global_unicast_addresses_are_public(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "https://till.example.com/hooks",
        "https://93.184.215.14:8443/hooks",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/hooks",
    ],
)
def test_a_public_https_url_is_allowed(url: str) -> None:
    assert url_refusal(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://till.example.com/hooks", "must be https"),
        ("https://127.0.0.1/hooks", "internal address"),
        ("https://169.254.169.254/latest/meta-data", "internal address"),
        ("https://[::1]:8080/", "internal address"),
        ("https://localhost/hooks", "internal address"),
        ("https://redis/", "internal address"),  # a bare cluster service name
        ("https://db.internal/", "internal address"),
        ("https://printer.local/", "internal address"),
        ("https://user:pw@till.example.com/", "credentials"),
        ("https:///hooks", "no host"),
        ("https://till.example.com:99999/", "not a URL"),
    ],
)
def test_an_internal_or_insecure_url_is_refused_with_its_reason(url: str, why: str) -> None:
    refusal = url_refusal(url)
    assert refusal is not None and why in refusal


async def test_a_name_resolving_to_loopback_is_never_connected_to() -> None:
    with pytest.raises(httpcore.ConnectError, match="no public address"):
        await PublicOnlyBackend().connect_tcp("localhost", 9)


async def test_unix_sockets_are_refused() -> None:
    with pytest.raises(httpcore.ConnectError):
        await PublicOnlyBackend().connect_unix_socket("/var/run/docker.sock")

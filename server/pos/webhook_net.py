"""Webhooks reach tills on the internet, never our own network (SSRF guard).

An admin of any brand sets an integration's ``webhook_url``, and the worker POSTs to it from
inside the deployment, where the database, Redis, the cloud's metadata service
(169.254.169.254) and the cluster's services answer. So a URL is checked twice:

- when it is set (:func:`url_refusal`): an http(s) URL whose host is not an address or name
  that can only be internal (loopback, private, link-local, ``localhost``, ``*.internal``);
- when a delivery connects (:class:`PublicOnlyBackend`): the host is resolved here, every
  address it resolves to is checked, and the connection goes to the checked address. A name
  that resolved to a public address when it was set and to a private one now (DNS rebinding)
  is refused at connect time, with no second lookup between the check and the connect.

``pos_webhook_private_ok`` turns both off, for a till simulator on a developer's machine and
for the tests' local receivers; settings refuse it in production.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

__all__ = ["PublicOnlyBackend", "is_public_address", "public_only_transport", "url_refusal"]

_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")


def is_public_address(address: str) -> bool:
    """Whether ``address`` (IPv4 or IPv6, text) is a global unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id names a local link
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def url_refusal(url: str) -> str | None:
    """Why ``url`` may not be a webhook URL, or None when it may."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        return f"webhook_url is not a URL: {exc}"
    if parts.scheme != "https":
        return "webhook_url must be https (deliveries carry guests' orders)"
    if not host:
        return "webhook_url has no host"
    if parts.username is not None or parts.password is not None:
        return "webhook_url must not carry credentials; tills verify the signature instead"
    try:
        internal = not is_public_address(host)
    except ValueError:  # a name, not an address
        name = host.rstrip(".").lower()
        internal = name == "localhost" or "." not in name or name.endswith(_INTERNAL_SUFFIXES)
    if internal:
        return f"webhook_url must reach the internet; {host} is an internal address"
    return None


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend that connects only to public addresses it resolved itself."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface names it so
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                found = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        public = [address for address in addresses if is_public_address(address)]
        if not public:
            raise httpcore.ConnectError(
                f"{host} resolves to no public address ({', '.join(addresses)}): "
                "webhooks are sent only to the internet"
            )
        return await self._inner.connect_tcp(
            public[0], port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface names it so
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are not sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def public_only_transport() -> httpx.AsyncHTTPTransport:
    """httpx's own transport, its connection pool built over :class:`PublicOnlyBackend`.

    httpx takes no network backend, so the pool it made is replaced by the same pool with
    ours (httpx's defaults: TLS verified against certifi, HTTP/1.1, its limits); TLS still
    checks the certificate against the URL's host name, not the address connected to.
    """
    transport = httpx.AsyncHTTPTransport(retries=0)
    transport._pool = httpcore.AsyncConnectionPool(  # private: see the docstring
        ssl_context=httpx.create_ssl_context(),
        max_connections=100,  # httpx's DEFAULT_LIMITS
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=PublicOnlyBackend(),
    )
    return transport

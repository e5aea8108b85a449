"""Async HTTP client for the Regulars API as the kiosk uses it (DESIGN §9).

Every call either returns a decoded ``shared.contract`` Struct or raises one of two errors the
session can act on: :class:`ApiProblem` (the server answered and refused: a problem+json with a
stable slug) or :class:`Offline` (no usable answer: connection refused, timeout, 502/503/504).
The client never retries a state-changing call by itself; the outbox owns retries and keys.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import httpx
import msgspec

from kiosk.settings import KioskSettings
from shared import contract

__all__ = ["ApiProblem", "DevicePairing", "KioskApi", "Offline", "token_locations"]

T = TypeVar("T")

# Statuses that mean "the server is not there right now", not "the server said no".
_UNAVAILABLE = {502, 503, 504}


class ApiProblem(Exception):
    """The server refused the request. ``slug`` is the last segment of the problem ``type``."""

    def __init__(self, status: int, slug: str, detail: str, body: dict[str, Any] | None = None):
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.detail = detail
        self.body = body or {}

    @property
    def retryable(self) -> bool:
        """True when sending the same request later may succeed (rate limit, busy, 5xx)."""
        return (
            self.status in (408, 425, 429)
            or self.status >= 500
            or (self.status == 409 and "in-progress" in self.slug)
        )


class Offline(Exception):
    """The server could not be reached or answered that it is unavailable."""


# The pairing answer, from the shared contract.
DevicePairing = contract.DevicePaired


class KioskApi:
    """One kiosk's connection to one server. Holds the staff tokens once signed in.

    Not thread-safe: use it from the session's asyncio loop only.
    """

    def __init__(
        self,
        base_url: str,
        settings: KioskSettings | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings or KioskSettings()
        self.base_url = base_url.rstrip("/")
        self.tokens: contract.TokenPair | None = None
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._refresh_lock = asyncio.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(
                self.settings.http_timeout_s, connect=self.settings.http_connect_timeout_s
            )
            self._client = httpx.AsyncClient(
                base_url=self.base_url, timeout=timeout, transport=self._transport
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool; the client can be used again afterwards."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def set_base_url(self, base_url: str) -> None:
        """Point at another server (from Settings); drops tokens, which belong to the old one."""
        await self.aclose()
        self.base_url = base_url.rstrip("/")
        self.tokens = None

    def _headers(
        self, idempotency_key: UUID | str | None, auth: bool, access_token: str | None = None
    ) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if access_token is not None:
            headers["authorization"] = f"Bearer {access_token}"
        elif auth and self.tokens is not None:
            headers["authorization"] = f"Bearer {self.tokens.access_token}"
        if idempotency_key is not None:
            headers["idempotency-key"] = str(idempotency_key)
        return headers

    async def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        idempotency_key: UUID | str | None = None,
        auth: bool = True,
        access_token: str | None = None,
    ) -> httpx.Response:
        content = msgspec.json.encode(body) if body is not None else None
        headers = self._headers(idempotency_key, auth, access_token)
        if content is not None:
            headers["content-type"] = "application/json"
        try:
            return await self._http().request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:  # connect refused, DNS, timeouts, reset
            raise Offline(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc

    async def _call(
        self,
        type_: type[T],
        method: str,
        path: str,
        body: Any = None,
        idempotency_key: UUID | str | None = None,
        auth: bool = True,
        access_token: str | None = None,
    ) -> T:
        """One request; ``access_token`` sends someone else's token (an approver's) instead
        of the kiosk's own, and is never refreshed."""
        response = await self._send(method, path, body, idempotency_key, auth, access_token)
        if (
            response.status_code == 401
            and auth
            and access_token is None
            and await self._try_refresh()
        ):
            # A refreshed token makes the same request valid again; the same idempotency
            # key makes repeating a state-changing call safe.
            response = await self._send(method, path, body, idempotency_key, auth)
        if response.status_code in _UNAVAILABLE:
            raise Offline(f"server unavailable ({response.status_code})")
        if response.status_code >= 400:
            raise problem_from(response)
        try:
            return msgspec.json.decode(response.content, type=type_)
        except msgspec.ValidationError as exc:
            raise ApiProblem(
                response.status_code, "unexpected-response", f"the server's answer: {exc}"
            ) from exc

    async def _try_refresh(self) -> bool:
        if self.tokens is None:
            return False
        stale = self.tokens
        async with self._refresh_lock:
            if self.tokens is not stale:  # another call refreshed meanwhile
                return True
            response = await self._send(
                "POST", "/v1/auth/refresh", {"refresh_token": stale.refresh_token}, auth=False
            )
            if response.status_code != 200:
                return False
            self.tokens = msgspec.json.decode(response.content, type=contract.TokenPair)
            return True

    # -- calls ----------------------------------------------------------------------------

    async def health(self) -> bool:
        """True if ``/healthz`` answers 200; never raises for network trouble."""
        try:
            response = await self._send("GET", "/healthz", auth=False)
        except Offline:
            return False
        return response.status_code == 200

    async def login_staff(
        self, email: str, password: str, totp: str | None = None
    ) -> contract.TokenPair:
        """Sign in with email and password; keeps the tokens for later calls."""
        self.tokens = await self.password_tokens(email, password, totp)
        return self.tokens

    async def password_tokens(
        self, email: str, password: str, totp: str | None = None
    ) -> contract.TokenPair:
        """Someone else's password sign-in (an approver's): returned, not kept."""
        body = contract.StaffLogin(email=email, password=password, totp=totp)
        return await self._call(contract.TokenPair, "POST", "/v1/auth/staff", body, auth=False)

    async def login_pin(
        self, device_id: str, device_secret: str, email: str, pin: str
    ) -> contract.TokenPair:
        """Sign in on a paired device with a staff PIN; keeps the tokens."""
        self.tokens = await self.pin_tokens(device_id, device_secret, email, pin)
        return self.tokens

    async def pin_tokens(
        self, device_id: str, device_secret: str, email: str, pin: str
    ) -> contract.TokenPair:
        """Someone else's PIN sign-in on this device (an approver's): the tokens are returned,
        not kept, so the kiosk's own sign-in is untouched. Refusals as for :meth:`login_pin`."""
        body = contract.PinLogin(
            device_id=UUID(device_id), device_secret=device_secret, email=email, pin=pin
        )
        return await self._call(contract.TokenPair, "POST", "/v1/auth/pin", body, auth=False)

    async def end_session(self, access_token: str) -> bool:
        """End the session of a borrowed token (``POST /v1/auth/signout``): its access and
        refresh tokens stop working at once. False if the server could not be told; never
        raises, the token then simply expires."""
        try:
            response = await self._send(
                "POST", "/v1/auth/signout", auth=False, access_token=access_token
            )
        except Offline:
            return False
        return response.status_code == 204

    def sign_out(self) -> None:
        """Forget the tokens (the server lets them expire)."""
        self.tokens = None

    async def pair_device(self, pairing_code: str) -> DevicePairing:
        """Exchange a one-time pairing code (from the back office) for device credentials."""
        return await self._call(
            DevicePairing,
            "POST",
            "/v1/kiosk/devices/pair",
            {"pairing_code": pairing_code},
            auth=False,
        )

    async def locations(self) -> list[contract.Location]:
        """The brand's locations (used to pick a location when not paired)."""
        return await self._call(list[contract.Location], "GET", "/v1/locations")

    async def currency(self, location_id: UUID | str) -> str:
        """The ISO currency of a location (from its menu), for showing money."""
        menu = await self._call(contract.Menu, "GET", f"/v1/locations/{location_id}/menu")
        return menu.currency

    async def scan(self, code: str, scanned_at: datetime | None = None) -> contract.GuestCard:
        """Look a guest up by QR code, card number or phone."""
        body = contract.ScanIn(code=code, scanned_at=scanned_at)
        return await self._call(contract.GuestCard, "POST", "/v1/kiosk/scan", body)

    async def accrue(
        self,
        guest_id: UUID | str,
        body: contract.AccrualIn,
        idempotency_key: UUID | str,
        access_token: str | None = None,
    ) -> contract.Transfer:
        """Credit points for money paid at the counter; idempotent on ``idempotency_key``.

        ``access_token`` makes it an approver's accrual (their token, their role's limits);
        403 ``accrual-needs-approval`` when it passes the limits of whoever sends it.
        """
        path = f"/v1/guests/{guest_id}/accruals"
        return await self._call(
            contract.Transfer, "POST", path, body, idempotency_key, access_token=access_token
        )

    async def reserve_redemption(
        self, guest_id: UUID | str, body: contract.RedemptionIn, idempotency_key: UUID | str
    ) -> contract.Transfer:
        """Hold points for a redemption (a pending transfer)."""
        path = f"/v1/guests/{guest_id}/redemptions"
        return await self._call(contract.Transfer, "POST", path, body, idempotency_key)

    async def post_redemption(
        self, transfer_id: UUID | str, idempotency_key: UUID | str
    ) -> contract.Transfer:
        """Make a held redemption final."""
        path = f"/v1/redemptions/{transfer_id}/post"
        return await self._call(contract.Transfer, "POST", path, {}, idempotency_key)

    async def void_redemption(
        self, transfer_id: UUID | str, idempotency_key: UUID | str
    ) -> contract.Transfer:
        """Release a held redemption; the points go back to the guest."""
        path = f"/v1/redemptions/{transfer_id}/void"
        return await self._call(contract.Transfer, "POST", path, {}, idempotency_key)

    async def queue(self, location_id: UUID | str) -> list[contract.Order]:
        """The location's open pre-orders."""
        return await self._call(list[contract.Order], "GET", f"/v1/locations/{location_id}/queue")

    async def set_order_status(
        self, order_id: UUID | str, status: str, idempotency_key: UUID | str
    ) -> contract.Order:
        """Move an order to ``status``; the server allows only the next step."""
        body = {"status": status}
        path = f"/v1/orders/{order_id}/status"
        return await self._call(contract.Order, "POST", path, body, idempotency_key)

    def live_queue_url(self, location_id: UUID | str) -> str:
        """The WebSocket URL of the live queue, carrying the current access token."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        token = self.tokens.access_token if self.tokens else ""
        path = f"{parts.path.rstrip('/')}/v1/locations/{location_id}/queue/live"
        return urlunsplit((scheme, parts.netloc, path, f"token={token}", ""))

    async def refresh_tokens(self) -> bool:
        """Trade the refresh token for a new pair (used when the WebSocket is refused)."""
        return await self._try_refresh()


def problem_from(response: httpx.Response) -> ApiProblem:
    """Read a problem+json body; anything else becomes a generic problem for its status."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        body = {}
    type_ = str(body.get("type") or "")
    slug = type_.rstrip("/").rsplit("/", 1)[-1] if type_ else f"http-{response.status_code}"
    detail = str(body.get("detail") or body.get("title") or response.reason_phrase or "")
    return ApiProblem(response.status_code, slug, detail, body)


def token_locations(access_token: str) -> list[str] | None:
    """The location ids a staff access token names (its ``loc`` claim), or None if unknown.

    Read without verifying the signature: the kiosk only uses it to pick a sensible default
    location; the server checks every request itself.
    """
    try:
        payload = access_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    loc = claims.get("loc") if isinstance(claims, dict) else None
    return [str(x) for x in loc] if isinstance(loc, list) else None

"""The live pre-order queue over WebSocket, reconnecting by itself with capped backoff.

A socket can go stale without closing (Wi-Fi roaming, a proxy dropping idle connections);
keepalive pings detect that and turn it into a reconnect. After every (re)connect the caller
re-reads the full queue, so events missed while disconnected are never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from kiosk.settings import KioskSettings
from shared import contract

__all__ = ["Backoff", "LiveEvent", "LiveQueue"]

log = logging.getLogger("kiosk.live")
# The close code the server sends when the socket's access token is missing or has expired
# (WS_UNAUTHENTICATED in server/counter/controller.py).
_TOKEN_REFUSED = 4401


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter, capped at ``max_s``; ``reset`` after success."""

    initial_s: float
    max_s: float
    rng: Callable[[], float] = field(default=random.random)
    attempt: int = 0

    def next_delay(self) -> float:
        """The next wait: uniform in [initial/2, min(max, initial * 2**attempt)]."""
        ceiling = min(self.max_s, self.initial_s * float(2**self.attempt))
        self.attempt += 1
        floor = self.initial_s / 2
        return floor + (ceiling - floor) * self.rng()

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True, slots=True)
class LiveEvent:
    event: str
    order: contract.Order


def parse_event(raw: str | bytes) -> LiveEvent | None:
    """Decode one pushed message; unknown or malformed messages are ignored (None)."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "order" not in data:
            return None
        order = msgspec.convert(data["order"], contract.Order, strict=False)
    except (ValueError, msgspec.ValidationError):
        log.warning("ignoring a malformed live queue message")
        return None
    return LiveEvent(str(data.get("event", "")), order)


class LiveQueue:
    """Keeps one WebSocket to the queue open while :meth:`run` runs."""

    def __init__(
        self,
        url: Callable[[], str],
        on_event: Callable[[LiveEvent], Awaitable[None]],
        on_connected: Callable[[bool], Awaitable[None]],
        refresh_auth: Callable[[], Awaitable[bool]],
        settings: KioskSettings,
    ) -> None:
        self._url = url
        self._on_event = on_event
        self._on_connected = on_connected
        self._refresh_auth = refresh_auth
        self._settings = settings
        self.backoff = Backoff(settings.ws_backoff_initial_s, settings.ws_backoff_max_s)

    async def run(self) -> None:
        """Connect, deliver events, reconnect on any failure; returns only when cancelled."""
        while True:
            try:
                async with connect(
                    self._url(),
                    ping_interval=self._settings.ws_ping_interval_s,
                    ping_timeout=self._settings.ws_ping_timeout_s,
                    open_timeout=self._settings.ws_open_timeout_s,
                    close_timeout=1,
                ) as ws:
                    self.backoff.reset()
                    await self._on_connected(True)
                    async for raw in ws:
                        event = parse_event(raw)
                        if event is not None:
                            await self._on_event(event)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == _TOKEN_REFUSED:
                    # The server closes the socket when the token that opened it expires:
                    # reconnect with a fresh one rather than be refused with the old one.
                    await self._refresh_auth()
                log.info("live queue closed: %s", exc)
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    # The access token in the URL expired; a fresh one makes the next try work.
                    await self._refresh_auth()
                log.info("live queue refused: %s", exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("live queue disconnected: %s", exc)
            await self._on_connected(False)
            await asyncio.sleep(self.backoff.next_delay())

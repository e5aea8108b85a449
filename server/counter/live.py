"""The live pre-order queue of a location: one Redis pattern subscription per process, fanned
out to every open WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from uuid import UUID

import msgspec

from server.infra.redis import RedisGate

__all__ = ["QUEUE_CHANNEL_PATTERN", "LiveQueues", "queue_hello"]

log = logging.getLogger("regulars.kiosk")
_encode = msgspec.json.Encoder().encode
QUEUE_CHANNEL_PATTERN = "rg:queue:*"
_QUEUE_PREFIX = "rg:queue:"


class LiveQueues:
    """One Redis pub/sub subscription per process, fanned out to the WebSockets of each
    location. The worker's outbox relay publishes; any API process may hold the socket."""

    def __init__(self, gate: RedisGate, retry_after_s: float, buffer_max: int = 200) -> None:
        self.gate = gate
        self.retry_after_s = retry_after_s
        self.buffer_max = buffer_max
        self._listeners: dict[str, set[asyncio.Queue[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def listen(
        self, location_id: UUID, ready_timeout_s: float = 5.0
    ) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of this location's events (JSON text) while the context is open.

        Waits until the subscription is live, so nothing published after entry is missed.
        A listener that falls ``buffer_max`` events behind loses the oldest ones (the kiosk
        re-reads the queue on reconnect anyway).
        """
        channel = f"{_QUEUE_PREFIX}{location_id}"
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=self.buffer_max)
        self._listeners.setdefault(channel, set()).add(queue)
        if self._task is None or self._task.done():
            self._subscribed.clear()
            self._task = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(ready_timeout_s):
                await self._subscribed.wait()
            yield queue
        finally:
            listeners = self._listeners.get(channel, set())
            listeners.discard(queue)
            if not listeners:
                self._listeners.pop(channel, None)

    async def _run(self) -> None:
        while True:
            pubsub = self.gate.client.pubsub()
            try:
                await pubsub.psubscribe(QUEUE_CHANNEL_PATTERN)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "pmessage":
                        self._dispatch(str(message["channel"]), str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: listeners wait; kiosks re-read on reconnect
                self._subscribed.clear()
                log.debug("live queue feed interrupted: %s", exc)
                await asyncio.sleep(self.retry_after_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        for queue in self._listeners.get(channel, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def queue_hello(location_id: UUID) -> str:
    """The first message on a live socket: the subscription is live from here on."""
    return _encode({"event": "subscribed", "location_id": str(location_id)}).decode()

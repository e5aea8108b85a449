"""The Redis client and a gate that lets the API run on PostgreSQL alone while Redis is down.

Redis is an accelerator (DESIGN §4). A failed call marks it down for a short while, so a dead
Redis costs one fast timeout, not one per request; after that the next call tries again, and
the first success brings it back without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.settings import Settings

__all__ = ["RedisGate", "RedisUnavailable", "create_redis"]

T = TypeVar("T")
log = logging.getLogger("regulars.redis")


class RedisUnavailable(Exception):
    """Redis did not answer; the caller takes the PostgreSQL path."""


def create_redis(settings: Settings, url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_pool_max,
        timeout=settings.redis_socket_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool)


class RedisGate:
    """Runs Redis calls, remembers when Redis failed, and says whether it is degraded."""

    def __init__(self, client: aioredis.Redis, retry_after_s: float) -> None:
        self.client = client
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._on_recover: list[Callable[[], Awaitable[None]]] = []
        self._was_down = False

    @property
    def degraded(self) -> bool:
        return self._was_down

    def on_recover(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once each time Redis answers again after an outage."""
        self._on_recover.append(callback)

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``; raise RedisUnavailable at once while Redis is known to be down."""
        if time.monotonic() < self._down_until:
            raise RedisUnavailable("redis marked down")
        try:
            result = await call()
        # Only "Redis is not there" counts as an outage; a command error is a bug and raises.
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if not self._was_down:
                log.warning("redis unavailable, using PostgreSQL only: %s", exc)
            self._was_down = True
            self._down_until = time.monotonic() + self.retry_after_s
            raise RedisUnavailable(str(exc)) from exc
        if self._was_down:
            self._was_down = False
            log.warning("redis is back")
            for callback in self._on_recover:
                await callback()
        return result

    async def ping(self) -> bool:
        try:
            await self.run(self.client.ping)
        except RedisUnavailable:
            return False
        return True

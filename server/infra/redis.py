"""The Redis client and a gate that lets the API run on PostgreSQL alone while Redis is down.

Redis is an accelerator (DESIGN §4). A failed call marks it down for a short while, so a dead
Redis costs one fast timeout, not one per request; after that the next call tries again, and
the first success brings it back without a restart.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.settings import Settings

__all__ = ["RedisGate", "RedisLine", "RedisUnavailable", "create_redis", "script_sha"]

T = TypeVar("T")
log = logging.getLogger("regulars.redis")


class RedisUnavailable(Exception):
    """Redis did not answer; the caller takes the PostgreSQL path."""


def create_redis(settings: Settings, url: str) -> aioredis.Redis:
    """The pooled client for everything but the hot path's scripts (see RedisLine).

    A call that finds its pooled connection closed (Redis restarted, or a proxy dropped it)
    connects again once: without that, the first call on each stale connection failed and
    marked Redis down, which refused sign-ins for ``redis_retry_after_s``. Timeouts are not
    retried: a Redis that does not answer would make the caller wait twice.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_pool_max,
        timeout=settings.redis_socket_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        decode_responses=True,
    )
    return aioredis.Redis(connection_pool=pool)


# Error replies classified as redis-py's parser does: NOSCRIPT (the line then loads the
# script), and "Redis cannot serve us now" as redis-py's ConnectionError kinds, which
# RedisGate takes as Redis down. Any other error reply is a ResponseError: a bug, it raises.
_ERRORS: dict[str, type[ResponseError] | type[RedisConnectionError]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


class _Replies(asyncio.Protocol):
    """Matches replies to calls in the order they were sent (Redis answers in order)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they provide its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Queue ``command``: the commands of one turn of the event loop leave together in
        one write at its end (auto-pipelining). Checkouts that reach Redis in the same turn
        cost Redis one wake-up and the API one syscall instead of one each."""
        if not self.outgoing:
            loop.call_soon(self.flush)
        self.outgoing.append(command)

    def flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if outgoing and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(outgoing))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            call = self.waiting.popleft()
            if call.done():  # timed out: its reply still takes its turn
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                call.set_exception(_ERRORS.get(text.split(" ", 1)[0], ResponseError)(text))
            else:
                call.set_result(reply)

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def expire(self, call: asyncio.Future[Any]) -> None:
        """A call's time is up: it fails with TimeoutError, and the connection is dropped, so
        a line that stopped answering (a half-open socket) is replaced by the next call."""
        if not call.done():
            call.set_exception(TimeoutError("redis did not answer in time"))
            if self.transport is not None:
                self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        while self.waiting:
            call = self.waiting.popleft()
            if not call.done():
                call.set_exception(ConnectionError(f"redis connection lost: {exc}"))


class RedisLine:
    """One pipelined connection that the hot path's scripts share (DESIGN §4).

    Why not the redis-py pool the rest of the app uses: each EVALSHA through it took about
    46 µs of client CPU (pool checkout, retry wrapper, timeout context, layered parsing), the
    largest single part of a checkout's API time. Redis answers every connection in order, so
    calls from all requests can share one: each queues its command and awaits the reply whose
    turn it is, with no checkout. The commands of one turn of the event loop leave in one
    write at its end and reach Redis in one read (at 16 checkouts in flight, 0.37 reads and
    writes per checkout for Redis instead of 0.84; docs/PERFORMANCE.md). A
    call whose reply takes longer than ``reply_timeout_s`` raises TimeoutError and drops the
    connection; a lost connection fails every call in flight with ConnectionError, and the next
    call connects again.
    """

    def __init__(self, url: str, connect_timeout_s: float, reply_timeout_s: float) -> None:
        self.options = parse_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._replies: _Replies | None = None
        self._connecting = asyncio.Lock()

    async def call(self, *args: str | int) -> Any:
        """Send one command and return its reply; Redis errors raise ResponseError."""
        replies = self._replies
        if replies is None or not replies.open:
            replies = await self._connect()
        return await self._send(replies, args)

    async def evalsha(self, sha: str, source: str, keys: list[str], args: list[str | int]) -> Any:
        """Run a script by its SHA1, loading ``source`` first if Redis does not have it."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", source)
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._replies is not None:
            self._replies.close()
        self._replies = None

    async def _send(self, replies: _Replies, args: tuple[str | int, ...]) -> Any:
        assert replies.transport is not None
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        replies.waiting.append(reply)
        # hiredis's stub types the argument as a 1-tuple; it takes any number of arguments.
        replies.send(hiredis.pack_command(args), loop)  # type: ignore[arg-type]
        # One timer per call costs far less than asyncio.timeout's context manager here.
        timer = loop.call_later(self.reply_timeout_s, replies.expire, reply)
        try:
            return await reply
        finally:
            timer.cancel()

    async def _connect(self) -> _Replies:
        async with self._connecting:
            if self._replies is not None and self._replies.open:
                return self._replies
            options, loop = self.options, asyncio.get_running_loop()
            async with asyncio.timeout(self.connect_timeout_s):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    _, replies = await loop.create_unix_connection(_Replies, options["path"])
                else:
                    tls = options.get("connection_class") is SSLConnection
                    _, replies = await loop.create_connection(
                        _Replies,
                        options["host"],
                        options.get("port", 6379),
                        ssl=ssl.create_default_context() if tls else None,
                    )
                try:
                    if options.get("password"):
                        user = [options["username"]] if options.get("username") else []
                        await self._send(replies, ("AUTH", *user, options["password"]))
                    if options.get("db"):
                        await self._send(replies, ("SELECT", options["db"]))
                except BaseException:
                    replies.close()
                    raise
            self._replies = replies
            return replies


def script_sha(source: str) -> str:
    """The SHA1 Redis names a script by (what SCRIPT LOAD returns)."""
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class RedisGate:
    """Runs Redis calls, remembers when Redis failed, and says whether it is degraded."""

    def __init__(self, client: aioredis.Redis, line: RedisLine, retry_after_s: float) -> None:
        self.client = client
        self.line = line  # the hot path's scripts (HotWallets); everything else uses client
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

    async def aclose(self) -> None:
        await self.line.aclose()
        await self.client.aclose()

    async def ping(self) -> bool:
        try:
            await self.run(self.client.ping)
        except RedisUnavailable:
            return False
        return True

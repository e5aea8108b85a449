"""The Redis client and a gate that lets the API run on PostgreSQL alone while Redis is down.

Redis is an accelerator (DESIGN §4). A failed call marks it down for a short while, so a dead
Redis costs one fast timeout, not one per request; after that the next call tries again, and
the first success brings it back without a restart.

The same code runs against one Redis or a Redis Cluster (DESIGN §8): ``open_redis`` asks the
node that ``REGULARS_REDIS_URL`` names whether it is part of a cluster and builds the matching
pooled client and hot-path line, so an operator changes nothing but the URL.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.settings import Settings

__all__ = [
    "ClusterLine",
    "HotLine",
    "RedisClient",
    "RedisGate",
    "RedisLine",
    "RedisUnavailable",
    "create_redis",
    "open_redis",
    "publish_many",
    "script_sha",
]

T = TypeVar("T")
# What the app holds for everything but the hot path: one server's client or a cluster's.
RedisClient = aioredis.Redis | RedisCluster
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
    # A cluster that lost a master (its slots unserved) or is moving a slot: Redis is not
    # there for this key right now, which the gate treats like a dead server.
    "CLUSTERDOWN": RedisConnectionError,
    "TRYAGAIN": RedisConnectionError,
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

    async def keyed(self, key: str, *args: str | int) -> Any:
        """Send one command about ``key`` (the cluster line routes by it; here it is one)."""
        return await self.call(*args)

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


class ClusterLine:
    """RedisLine for a Redis Cluster: one pipelined line per master, chosen by the key's slot.

    Every hot-path script touches one guest's keys, which share a hash tag and so one slot
    (DESIGN §4), so a call goes to exactly one master. The slot map comes from CLUSTER SLOTS
    of any node that answers (the URL's node first, then every master seen before); a MOVED
    reply or a lost master makes the next call read it again, so a failover or a restarted
    node is followed without a restart of the API. ``SCRIPT`` commands go to every master.
    """

    def __init__(self, url: str, connect_timeout_s: float, reply_timeout_s: float) -> None:
        self.url = url
        options = parse_url(url)
        self.seed = (str(options.get("host", "127.0.0.1")), int(options.get("port", 6379)))
        self.password = options.get("password")
        self.username = options.get("username")
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self._lines: dict[tuple[str, int], RedisLine] = {}
        self._slots: list[tuple[str, int]] | None = None
        self._refreshing = asyncio.Lock()

    async def call(self, *args: str | int) -> Any:
        """A command without keys: ``SCRIPT …`` runs on every master, anything else on one."""
        masters = await self._masters()
        if str(args[0]).upper() == "SCRIPT":
            replies = [await self._on(node, lambda line: line.call(*args)) for node in masters]
            return replies[-1]
        return await self._on(masters[0], lambda line: line.call(*args))

    async def keyed(self, key: str, *args: str | int) -> Any:
        """Send one command about ``key`` to the master that owns its slot."""
        return await self._routed(key, lambda line: line.call(*args))

    async def evalsha(self, sha: str, source: str, keys: list[str], args: list[str | int]) -> Any:
        """Run a script on the master that owns ``keys`` (all in one slot)."""
        return await self._routed(keys[0], lambda line: line.evalsha(sha, source, keys, args))

    async def _routed(self, key: str, call: Callable[[RedisLine], Awaitable[T]]) -> T:
        for attempt in range(2):
            node = (await self._map())[key_slot(key.encode())]
            try:
                return await self._on(node, call)
            except ResponseError as exc:
                # The slot moved (failover, resharding): read the map again and retry once.
                if attempt or not str(exc).startswith(("MOVED", "ASK")):
                    raise
                self._slots = None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for line in self._lines.values():
            await line.aclose()
        self._lines.clear()

    async def _on(self, node: tuple[str, int], call: Callable[[RedisLine], Awaitable[T]]) -> T:
        try:
            return await call(self._line(node))
        except (ConnectionError, TimeoutError, RedisConnectionError):
            self._slots = None  # the master may be gone: ask the cluster again next time
            raise

    def _line(self, node: tuple[str, int]) -> RedisLine:
        line = self._lines.get(node)
        if line is None:
            auth = ""
            if self.password:
                auth = f"{self.username or ''}:{self.password}@"
            url = f"redis://{auth}{node[0]}:{node[1]}/0"
            line = self._lines[node] = RedisLine(url, self.connect_timeout_s, self.reply_timeout_s)
        return line

    async def _masters(self) -> list[tuple[str, int]]:
        return sorted(set(await self._map()))

    async def _map(self) -> list[tuple[str, int]]:
        slots = self._slots
        if slots is not None:
            return slots
        async with self._refreshing:
            if self._slots is None:
                self._slots = await self._read_map()
            return self._slots

    async def _read_map(self) -> list[tuple[str, int]]:
        """Slot -> master from the first node that answers CLUSTER SLOTS."""
        candidates = [self.seed, *(node for node in self._lines if node != self.seed)]
        failure: Exception | None = None
        for node in candidates:
            try:
                ranges = await self._line(node).call("CLUSTER", "SLOTS")
            except (ConnectionError, TimeoutError, RedisConnectionError, OSError) as exc:
                failure = exc
                continue
            owners: list[tuple[str, int] | None] = [None] * 16384
            for first, last, master, *_replicas in ranges:
                host = master[0] or node[0]
                for slot in range(int(first), int(last) + 1):
                    owners[slot] = (str(host), int(master[1]))
            if any(owner is None for owner in owners):
                raise RedisConnectionError("CLUSTERDOWN some hash slots have no master")
            return [owner for owner in owners if owner is not None]
        raise RedisConnectionError(f"no cluster node answered CLUSTER SLOTS: {failure}")


HotLine = RedisLine | ClusterLine


async def cluster_enabled(url: str, connect_timeout_s: float) -> bool:
    """Whether the node at ``url`` runs in cluster mode (``INFO cluster``)."""
    probe = aioredis.Redis.from_url(
        url, socket_connect_timeout=connect_timeout_s, socket_timeout=connect_timeout_s
    )
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def open_redis(settings: Settings, url: str) -> tuple[RedisClient, HotLine]:
    """The pooled client and the hot-path line for ``url``: one server's or a cluster's.

    ``redis_cluster`` "auto" asks the node; when it does not answer (Redis away at start-up,
    which the API survives) it is taken as one server, and a warning says so. "yes" / "no"
    skip the question.
    """
    mode = settings.redis_cluster
    cluster = mode == "yes"
    if mode == "auto":
        try:
            cluster = await cluster_enabled(url, settings.redis_connect_timeout_s)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning(
                "could not ask Redis whether it is a cluster (%s): assuming one server", exc
            )
    if not cluster:
        line = RedisLine(url, settings.redis_connect_timeout_s, settings.redis_socket_timeout_s)
        return create_redis(settings, url), line
    log.info("Redis at %s is a cluster", url)
    client = RedisCluster.from_url(
        url,
        max_connections=settings.redis_pool_max,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        decode_responses=True,
        # Where a master died and no replica took over, the other slots keep serving.
        require_full_coverage=False,
    )
    hot = ClusterLine(url, settings.redis_connect_timeout_s, settings.redis_socket_timeout_s)
    return client, hot


async def publish_many(client: RedisClient, messages: Sequence[tuple[str, bytes]]) -> None:
    """PUBLISH each (channel, message) in order: one pipeline on one server; on a cluster,
    whose pipelines refuse PUBLISH, one call each (any node relays to every subscriber)."""
    if isinstance(client, RedisCluster):
        for channel, message in messages:
            await client.publish(channel, message)
        return
    async with client.pipeline(transaction=False) as pipe:
        for channel, message in messages:
            pipe.publish(channel, message)
        await pipe.execute()


def script_sha(source: str) -> str:
    """The SHA1 Redis names a script by (what SCRIPT LOAD returns)."""
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class RedisGate:
    """Runs Redis calls, remembers when Redis failed, and says whether it is degraded."""

    def __init__(self, client: RedisClient, line: HotLine, retry_after_s: float) -> None:
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

"""The asyncpg pool: bounded, with timeouts, jsonb as msgspec, and one transaction per use case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, cast

import asyncpg
import msgspec

from server.infra.problems import database_busy
from server.settings import Settings

__all__ = ["Database", "NestedAcquire", "connect_once", "create_pool", "holds_connection"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

# The task that holds a pooled connection in this context (see Database.connection).
_holder: ContextVar[asyncio.Task[Any] | None] = ContextVar("regulars_db_holder", default=None)


class NestedAcquire(RuntimeError):
    """A task asked the pool for a second connection while it holds one (a bug)."""


def holds_connection() -> bool:
    """Whether the calling task holds a pooled connection (see Database.connection)."""
    task = asyncio.current_task()
    return task is not None and _holder.get() is task


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: _encode(value).decode(),
        decoder=_decode,
        schema="pg_catalog",
        format="text",
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: the app keeps no session
    state (no SET, LISTEN, temporary tables or session locks on pooled connections), so the
    default reset would be one wasted round trip per request."""


async def create_pool(settings: Settings, dsn: str) -> asyncpg.Pool:
    """A pool sized and timed by settings; every statement has a server-side timeout."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.db_connect_timeout_s,
        command_timeout=settings.db_statement_timeout_ms / 1000 + 1,
        init=_init_connection,
        reset=_no_reset,
        server_settings={
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "regulars",
        },
    )
    assert pool is not None
    return pool


async def connect_once(dsn: str, timeout_s: float = 5.0) -> asyncpg.Connection:
    """One connection for CLI commands, with the same codecs as the pool."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    await _init_connection(conn)
    return conn


class Database:
    """The pool plus the one way services open a transaction."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection inside one transaction: committed on exit, rolled back on error."""
        async with self.connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for reads that need no transaction.

        Refuses 503 ``database-busy`` (with Retry-After) when no connection frees up within
        ``db_acquire_timeout_s``: an overloaded pool is a reason to come back, not a 500.

        Raises NestedAcquire when the calling task already holds a connection: with as many
        requests in flight as the pool has connections, every one of them would wait for a
        second connection that none gives back, and the whole process would stand still
        until the acquire timeout (a kiosk scan on a cold cache did, 5 s). Pass the held
        ``conn`` down instead.
        """
        if holds_connection():
            raise NestedAcquire(
                "this task already holds a pooled connection; pass it down instead of "
                "acquiring a second one (that can deadlock the pool)"
            )
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError:
            raise database_busy("too many requests at once; try again in a moment") from None
        held = _holder.set(asyncio.current_task())
        try:
            yield cast(asyncpg.Connection, conn)
        except asyncpg.InternalClientError:
            # The connection's protocol is out of step (asyncpg reports a session PostgreSQL
            # ended, whose FATAL it read before the socket closed, as "cannot switch to
            # state N"). Nothing checks it on the way back (_no_reset), so close it here:
            # the pool opens a new one instead of handing this one out again.
            conn.terminate()
            raise
        finally:
            _holder.reset(held)
            await self.pool.release(conn)

    async def warm_up(self, statements: Sequence[str]) -> None:
        """Open every connection the pool may hold and prepare ``statements`` on each, so that
        no request pays for a connection's first use. A statement that does not prepare
        (say, a schema behind the code) raises here, at start-up."""

        async def prepare_on_one() -> None:
            async with self.connection() as conn:
                for statement in statements:
                    await conn.prepare(statement)

        # Each in its own task, holding its connection until all are open: max_size distinct.
        await asyncio.gather(*(prepare_on_one() for _ in range(self.pool.get_max_size())))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        async with self.connection() as conn:
            return await conn.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.connection() as conn:
            return await conn.fetch(sql, *args)

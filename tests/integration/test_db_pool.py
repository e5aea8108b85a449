"""Database.connection (and a cache load) refuses a second pooled connection to a task that
holds one, and closes a connection whose protocol is out of step; warm_up opens the whole pool
at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from redis.exceptions import ResponseError

import server.lifespan
from server.app import create_app
from server.infra.cache import SingleFlightCache
from server.infra.db import Database, NestedAcquire, create_pool
from server.lifespan import lifespan
from server.loyalty.hot import HotWallets
from server.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    pool = await create_pool(settings, settings.database_url or "")
    try:
        yield Database(pool, acquire_timeout_s=2.0)
    finally:
        await pool.close()


async def test_a_task_that_holds_a_connection_cannot_take_a_second(db: Database) -> None:
    async with db.connection() as conn:
        with pytest.raises(NestedAcquire, match="pass it down"):
            async with db.connection():
                pass
        with pytest.raises(NestedAcquire):
            await db.fetchval("SELECT 1")
        assert await conn.fetchval("SELECT 1") == 1  # the held one still works
    # Released: the same task may take one again, one after another.
    assert await db.fetchval("SELECT 2") == 2
    async with db.transaction() as conn:
        assert await conn.fetchval("SELECT 3") == 3
    assert await db.fetchval("SELECT 4") == 4


async def test_a_task_that_holds_a_connection_cannot_wait_for_a_cache_load(db: Database) -> None:
    cache = SingleFlightCache(lambda _: db.fetchval("SELECT 7"), ttl_s=60, name="test")
    async with db.connection():
        # The load would run in another task, on a second connection: refused as well.
        with pytest.raises(NestedAcquire, match="pass the connection"):
            await cache.get("key")
    assert await cache.get("key") == 7
    async with db.connection():
        assert await cache.get("key") == 7  # fresh: nothing to wait for


async def test_other_tasks_take_their_own_while_one_is_held(db: Database) -> None:
    async with db.connection():
        # Tasks started here inherit this context, but they are not the holder.
        assert await asyncio.gather(*(db.fetchval("SELECT $1::int", n) for n in range(3))) == [
            0,
            1,
            2,
        ]


async def test_a_failed_body_releases_the_hold(db: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with db.connection():
            1 / 0  # noqa: B018
    assert await db.fetchval("SELECT 1") == 1


async def test_a_connection_out_of_step_is_closed_not_handed_out_again(db: Database) -> None:
    """asyncpg reports a session PostgreSQL ended, when it read the FATAL before the socket
    closed, as InternalClientError; the pool skips its reset check (_no_reset), so the
    connection is closed on the way back. Other errors leave the connection in the pool."""

    async def backend_alive(pid: int) -> bool:
        query = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
        return bool(await db.fetchval(query, pid))

    with pytest.raises(ZeroDivisionError):
        async with db.connection() as conn:
            kept = conn.get_server_pid()
            1 / 0  # noqa: B018
    assert await backend_alive(kept)
    with pytest.raises(asyncpg.InternalClientError):
        async with db.connection() as conn:
            broken = conn.get_server_pid()
            raise asyncpg.InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
    for _ in range(100):  # the backend exits once it sees the socket closed
        if not await backend_alive(broken):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the connection went back to the pool open")
    assert await db.fetchval("SELECT 1") == 1  # the pool opens another


async def test_warm_up_opens_every_connection_and_prepares_the_statements(db: Database) -> None:
    assert db.pool.get_size() < db.pool.get_max_size()
    await db.warm_up(["SELECT $1::int", "SELECT now()"])
    assert db.pool.get_size() == db.pool.get_max_size()
    # The statements are prepared for real: one the database cannot prepare fails start-up.
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.warm_up(["SELECT 1 FROM no_such_table"])
    assert await db.fetchval("SELECT 5") == 5


async def test_a_server_process_starts_with_its_pool_warm(settings: Settings) -> None:
    """HOT_STATEMENTS (the checkout's and the kiosk scan's) prepare against the real schema:
    one that did not would stop start-up here."""
    warm = msgspec.structs.replace(settings, db_warm_up=True)
    app = create_app(warm)
    async with lifespan(app):
        pool = app.state.services.db.pool
        assert pool.get_size() == pool.get_max_size() == warm.db_pool_max


async def test_a_statement_that_does_not_prepare_stops_start_up_and_closes_the_pool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.lifespan, "HOT_STATEMENTS", ("SELECT 1 FROM no_such_table",))
    app = create_app(msgspec.structs.replace(settings, db_warm_up=True))
    with pytest.raises(asyncpg.UndefinedTableError):
        async with lifespan(app):
            pass
    assert app.state.services.db.pool.is_closing()


async def test_a_script_redis_refuses_stops_start_up_and_closes_the_pool(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken Lua file is a bug to stop on (Redis away is not: the app runs without it)."""

    async def load_a_broken_script(self: HotWallets) -> None:
        await self.gate.run(lambda: self.gate.line.call("SCRIPT", "LOAD", "this is not lua"))

    monkeypatch.setattr(HotWallets, "preload", load_a_broken_script)
    app = create_app(settings)
    with pytest.raises(ResponseError, match="compil"):
        async with lifespan(app):
            pass
    assert app.state.services.db.pool.is_closing()

"""Database.connection refuses a second pooled connection to a task that holds one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.infra.db import Database, NestedAcquire, create_pool
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

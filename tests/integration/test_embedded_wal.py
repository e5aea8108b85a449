"""The launcher's WAL reserve: the segments a rush writes into exist before it starts.

Without them, PostgreSQL creates and zero-fills each new 16 MB WAL segment while every commit
waits (docs/PERFORMANCE.md, "New WAL files"); these tests check that the launcher makes them
once, that they lie ahead of the WAL being written, and that checkpoints keep them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from server.infra.db import connect_once
from server.infra.embedded import EmbeddedError, EmbeddedServices

RESERVE_MB = 64  # four segments: enough to see, cheap to write


async def _wal(database_url: str) -> tuple[str, list[str], str]:
    """The segment being written, the segments that exist, and min_wal_size."""
    conn = await connect_once(database_url)
    try:
        current = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
        names = [r["name"] for r in await conn.fetch("SELECT name FROM pg_ls_waldir()")]
        return (
            current,
            sorted(n for n in names if len(n) == 24),
            await conn.fetchval("SHOW min_wal_size"),
        )
    finally:
        await conn.close()


async def _write_segments(conn: asyncpg.Connection, count: int) -> None:
    for _ in range(count):
        await conn.execute("SELECT pg_logical_emit_message(false, 'test', 'x')")
        await conn.execute("SELECT pg_switch_wal()")


def test_reserve_is_made_once_lies_ahead_and_survives_checkpoints(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    logged: list[str] = []
    services = EmbeddedServices(tmp_path / "data", log=logged.append, wal_reserve_mb=RESERVE_MB)
    running = services.start(redis=False)
    try:
        current, names, min_wal_size = asyncio.run(_wal(running.database_url))
        assert min_wal_size == f"{RESERVE_MB}MB"
        ahead = [n for n in names if n > current]
        assert len(ahead) >= RESERVE_MB // 16 - 1, (current, names)
        assert any(m.startswith(f"reserving {RESERVE_MB} MB of WAL") for m in logged)

        async def use_them_then_checkpoint() -> None:
            conn = await connect_once(running.database_url)
            try:
                await _write_segments(conn, 2)
                await conn.execute("CHECKPOINT")
            finally:
                await conn.close()

        asyncio.run(use_them_then_checkpoint())
        now_current, now_names, _ = asyncio.run(_wal(running.database_url))
        assert now_current > current and now_current in names  # written into, not made
        # The checkpoint renamed the used segments ahead again: the reserve is as large as before.
        assert sum(n > now_current for n in now_names) >= RESERVE_MB // 16 - 1, now_names
    finally:
        services.stop()

    logged.clear()
    services = EmbeddedServices(tmp_path / "data", log=logged.append, wal_reserve_mb=RESERVE_MB)
    services.start(redis=False)
    try:
        assert not any("reserving" in m for m in logged), logged
    finally:
        services.stop()


def test_no_reserve_leaves_postgres_defaults(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    logged: list[str] = []
    services = EmbeddedServices(tmp_path / "data", log=logged.append, wal_reserve_mb=0)
    running = services.start(redis=False)
    try:
        _, _, min_wal_size = asyncio.run(_wal(running.database_url))
        assert min_wal_size == "80MB"
        assert not any("reserving" in m for m in logged)
    finally:
        services.stop()


def test_a_reserve_below_two_segments_is_refused_before_anything_starts(tmp_path: Path) -> None:
    services = EmbeddedServices(tmp_path / "data", wal_reserve_mb=16)
    with pytest.raises(EmbeddedError, match="at least 32 MB"):
        services.start()
    assert not (tmp_path / "data").exists()

"""Plain SQL migrations applied in file-name order, each exactly once.

Several processes may start at once (N API workers, the worker, a test session): a
PostgreSQL advisory lock serialises them, and the ``schema_migrations`` table records what
ran, so each file is applied by exactly one of them.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

__all__ = ["apply_migrations", "pending_migrations"]

# An arbitrary constant that names "the Regulars schema" among advisory locks.
MIGRATION_LOCK_ID = 0x5245_4755

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT name FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (name) VALUES ($1)"


def _migration_files() -> list[tuple[str, str]]:
    folder = resources.files("server") / "migrations"
    files = sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    )
    return files


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    await conn.execute(CREATE_TABLE)
    applied = {row["name"] for row in await conn.fetch(SELECT_APPLIED)}
    return [name for name, _ in _migration_files() if name not in applied]


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied by this call."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(CREATE_TABLE)
        done = {row["name"] for row in await conn.fetch(SELECT_APPLIED)}
        for name, sql in _migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(INSERT_APPLIED, name)
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied_now

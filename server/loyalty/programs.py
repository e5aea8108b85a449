"""Loyalty programs by brand, cached for a short while (they change rarely)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.loyalty.model import Program

__all__ = ["Programs"]

PROGRAM = "SELECT rules FROM loyalty_programs WHERE brand_id = $1"


class Programs:
    """Loyalty programs by brand, cached for a short while (they change rarely)."""

    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._cache = SingleFlightCache(self._load, ttl_s, "program")

    async def get(self, brand_id: UUID, conn: asyncpg.Connection | None = None) -> Program:
        """The brand's program. A caller that holds a connection passes it as ``conn``: a
        program that is not fresh is then read on it (see SingleFlightCache.get)."""
        if conn is None:
            return await self._cache.get(brand_id)
        program = self._cache.fresh(brand_id)
        if program is None:
            program = _program(await conn.fetchval(PROGRAM, brand_id))
            self._cache.put(brand_id, program)
        return program

    def forget(self, brand_id: UUID) -> None:
        """Drop the brand's cached program: the next get reads it afresh."""
        self._cache.forget(brand_id)

    async def _load(self, brand_id: UUID) -> Program:
        async with self._db.connection() as conn:
            return _program(await conn.fetchval(PROGRAM, brand_id))


def _program(rules: Any) -> Program:
    return msgspec.convert(rules or {}, Program)

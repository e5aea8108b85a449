"""Signed-out sessions: a denylist of refresh-token families that access tokens are checked
against, so that revoking a family ends its access tokens too, not only its refresh tokens.

An access token names its family (the ``fam`` claim). A revoked family is remembered in Redis
for ``access_ttl_s`` (no access token of it outlives that), and PostgreSQL's
``refresh_tokens.revoked_at`` stays the truth: when Redis cannot answer, the check asks
PostgreSQL, so a revocation still holds during a Redis outage (slower, never open).
"""

from __future__ import annotations

import logging
from uuid import UUID

from server.infra.db import Database
from server.infra.redis import RedisGate, RedisUnavailable

__all__ = ["Revocations"]

log = logging.getLogger("regulars.auth")

# Families revoked within the last $1 seconds, with how many seconds their denial has left.
RECENTLY_REVOKED = """
SELECT family_id,
       ceil($1 - extract(epoch FROM now() - max(revoked_at)))::int AS ttl_s
FROM refresh_tokens
WHERE revoked_at > now() - make_interval(secs => $1)
GROUP BY family_id
ORDER BY max(revoked_at) DESC
LIMIT $2
"""
FAMILY_REVOKED = """
SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NOT NULL)
"""


def _key(family_id: UUID) -> str:
    return f"rg:revoked-family:{family_id}"


class Revocations:
    """Deny a family's access tokens; ask whether a family is denied."""

    def __init__(self, db: Database, gate: RedisGate, access_ttl_s: int) -> None:
        self.db = db
        self.gate = gate
        self.access_ttl_s = access_ttl_s

    async def deny(self, family_id: UUID) -> None:
        """Refuse the family's access tokens from now on (call after the revocation commits).

        Redis away: the PostgreSQL flag is written already, the check falls back to it
        while Redis is away, and the worker writes the denial to Redis once it answers again
        (:meth:`resync`, every ``worker_interval_s``).
        """
        try:
            await self.gate.run(
                lambda: self.gate.client.set(_key(family_id), 1, ex=self.access_ttl_s)
            )
        except RedisUnavailable:
            log.warning("revoked family %s not written to Redis (unavailable)", family_id)

    async def is_denied(self, family_id: UUID) -> bool:
        """Whether the family was revoked: Redis first, PostgreSQL when Redis cannot say."""
        try:
            # Asked on every authenticated request, the checkout's too: over the hot path's
            # pipelined line, which costs a fraction of a pooled redis-py call (RedisLine).
            key = _key(family_id)
            line = self.gate.line
            return bool(await self.gate.run(lambda: line.keyed(key, "EXISTS", key)))
        except RedisUnavailable:
            pass
        # PostgreSQL down too: its error answers 503, never a pass for a revoked session.
        return bool(await self.db.fetchval(FAMILY_REVOKED, family_id))

    async def resync(self, batch_size: int) -> int:
        """Write every family revoked within ``access_ttl_s`` to the denylist again (a
        worker job): a revocation made while Redis was down, or a Redis that lost its data,
        is denied in Redis again within one worker pass (the ``batch_size`` most recent).
        Returns how many denials Redis did not have."""
        rows = await self.db.fetch(RECENTLY_REVOKED, float(self.access_ttl_s), batch_size)
        live = [(row["family_id"], row["ttl_s"]) for row in rows if row["ttl_s"] > 0]
        if not live:
            return 0

        async def write() -> int:
            async with self.gate.client.pipeline(transaction=False) as pipe:
                for family_id, ttl_s in live:
                    pipe.set(_key(family_id), 1, ex=ttl_s, nx=True)
                return sum(1 for written in await pipe.execute() if written)

        return await self.gate.run(write)

"""Idempotent state-changing requests (DESIGN §3).

The key, a hash of the request and the stored response live in PostgreSQL and are written in
the transaction of the effect. A replay returns the original response; the same key with a
different body is 422; a concurrent duplicate blocks on the key's row until the first commits,
then replays — never a second effect. A refused request rolls back and stores nothing, so a
retry is judged afresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from server.infra.problems import (
    MAX_IDEMPOTENCY_KEY_LEN,
    Problem,
    idempotency_key_invalid,
    idempotency_key_required,
)

__all__ = [
    "CLAIM",
    "IdempotentRequest",
    "Stored",
    "begin",
    "begin_request",
    "finish",
    "finish_request",
    "forget_expired",
    "request_hash",
    "require_key",
    "stored",
]

# The claim and the finish are SQL functions (migration 0012), which the checkout's one
# statement (place_order) calls as well: one implementation of each.
CLAIM = "SELECT idempotency_claim($1, $2, $3)"

# Up to $2 stored responses older than $1, oldest first (the BRIN index of migration 0026).
FORGET_EXPIRED = """
DELETE FROM idempotency_keys
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM idempotency_keys WHERE created_at < $1 ORDER BY created_at LIMIT $2
))
"""
STORED = """
SELECT request_hash, status_code, response FROM idempotency_keys WHERE scope = $1 AND key = $2
"""
FINISH = "SELECT idempotency_finish($1, $2, $3, $4)"
LOOKUP = STORED
MAX_KEY_LEN = MAX_IDEMPOTENCY_KEY_LEN


@dataclass(frozen=True, slots=True)
class Stored:
    status_code: int
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """One state-changing request as the idempotency table knows it: whose keys it is among
    (``scope``), the client's Idempotency-Key, and the hash of what it asks for."""

    scope: str
    key: str
    digest: bytes

    @classmethod
    def of(cls, scope: str, key: str, route: str, payload: object) -> IdempotentRequest:
        """The request ``payload`` to ``route`` (e.g. ``POST /v1/orders``) under ``key``."""
        return cls(scope, key, request_hash(route, payload))


def require_key(key: str | None) -> str:
    """The Idempotency-Key header, or a 400 that says it is needed."""
    if key is None or not key.strip():
        raise idempotency_key_required()
    if len(key) > MAX_KEY_LEN:
        raise idempotency_key_invalid()
    return key.strip()


def request_hash(route: str, payload: object) -> bytes:
    """A hash of what the request asks for, independent of JSON spacing or field order."""
    return hashlib.sha256(route.encode() + b"\0" + msgspec.json.encode(payload)).digest()


async def begin(conn: asyncpg.Connection, scope: str, key: str, digest: bytes) -> Stored | None:
    """Claim the key in this transaction; returns the stored response if it was used before."""
    if await conn.fetchval(CLAIM, scope, key, digest):
        return None
    return await stored(conn, scope, key, digest)


async def stored(conn: asyncpg.Connection, scope: str, key: str, digest: bytes) -> Stored:
    """After a claim that failed inside a caller's statement (place_order): the response to
    replay, 422 for a different request, 409 while the first is still running."""
    return _judge(await conn.fetchrow(STORED, scope, key), digest)


async def lookup(conn: asyncpg.Connection, scope: str, key: str, digest: bytes) -> Stored | None:
    """Without claiming: the stored response for the key, if any (for fast-path refusals)."""
    row = await conn.fetchrow(LOOKUP, scope, key)
    return None if row is None else _judge(row, digest)


def _judge(row: asyncpg.Record | None, digest: bytes) -> Stored:
    if row is None or row["response"] is None:
        raise Problem(
            409, "idempotency-in-progress", "a request with this key is still running; retry"
        )
    if bytes(row["request_hash"]) != digest:
        raise Problem(
            422,
            "idempotency-conflict",
            "this Idempotency-Key was used for a different request; use a new key",
        )
    return Stored(row["status_code"], bytes(row["response"]))


async def finish(conn: asyncpg.Connection, scope: str, key: str, status: int, body: bytes) -> None:
    """Store the response of a key claimed in this transaction (:func:`begin`)."""
    await conn.execute(FINISH, scope, key, status, body)


async def begin_request(conn: asyncpg.Connection, request: IdempotentRequest) -> Stored | None:
    """:func:`begin` for an :class:`IdempotentRequest`."""
    return await begin(conn, request.scope, request.key, request.digest)


async def finish_request(
    conn: asyncpg.Connection, request: IdempotentRequest, stored: Stored
) -> None:
    """:func:`finish` for an :class:`IdempotentRequest`."""
    await finish(conn, request.scope, request.key, stored.status_code, stored.body)


async def forget_expired(conn: asyncpg.Connection, older_than: datetime, limit: int) -> int:
    """Delete up to ``limit`` stored responses created before ``older_than``; returns how
    many. A retry with such a key is judged afresh, as a new request: clients retry within
    minutes (a till offline for hours sends receipts, whose keys are kept for good in
    ``receipt_keys``), so the table no longer grows with every checkout ever made."""
    status = await conn.execute(FORGET_EXPIRED, older_than, limit)
    return int(status.split()[-1])

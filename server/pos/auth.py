"""Who is calling from a till: the signed-request check (DESIGN §10), as a Litestar guard.

Order of the checks: the key (unknown, revoked or its integration disabled: 401), the
timestamp (older than ``pos_signature_max_age_s`` or too far ahead: 401), the HMAC over
``"<t>." + raw body`` (401), then the signature is remembered in Redis with ``SET NX`` for
``pos_signature_seen_ttl_s`` (seen before: 401). Nothing is stored on any refusal.

Redis down: **fail closed**, 503 ``signature-check-unavailable`` with Retry-After. Without
Redis a captured request could be replayed within its five minutes; receipts are idempotent,
but a tender post or void is not a thing to replay blind, and tills already queue and retry
(an offline till resends later with a fresh signature), so a short refusal costs nothing.

Reuse: non-streaming routes declare ``guards=[requires_till]`` and take the ``till``
dependency; a streaming route calls :meth:`TillAuth.open` and :meth:`TillAuth.close`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from server.infra.db import Database
from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable
from server.pos import sql
from server.pos.sealing import Sealer, SealError
from server.pos.signing import BodyMac, SignatureHeader, parse_signature
from server.settings import Settings

__all__ = ["KEY_HEADER", "SIGNATURE_HEADER", "Till", "TillAuth", "requires_till", "till_of"]

KEY_HEADER = "x-regulars-key"
SIGNATURE_HEADER = "x-regulars-signature"
_STATE_KEY = "pos_till"


@dataclass(frozen=True, slots=True)
class Till:
    """The integration a verified request came from."""

    integration_id: UUID
    brand_id: UUID
    location_id: UUID
    key_id: str
    # The vendor's id of this store (Square location, Loyverse store), when the admin set it.
    vendor_store_id: str | None = None


@dataclass(slots=True)
class PendingCheck:
    """A request whose key and timestamp passed; its body's MAC is being computed."""

    till: Till
    header: SignatureHeader
    mac: BodyMac


def _refuse(detail: str, slug: str = "invalid-signature") -> Problem:
    return Problem(401, slug, detail)


class TillAuth:
    def __init__(self, settings: Settings, db: Database, gate: RedisGate, sealer: Sealer) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.sealer = sealer
        # Secrets opened before, by their sealed bytes: opening one is four HMACs and a
        # byte-wise XOR in Python on every till request. This keeps nothing the process could
        # not open again at once (it holds the seal key), and the key row is still read on
        # every request, so revocation stays immediate.
        self._opened: dict[bytes, str] = {}

    async def open(self, headers: Any, conn: asyncpg.Connection | None = None) -> PendingCheck:
        """Check the key and the timestamp; the caller feeds the raw body to ``.mac``. The key
        is read on ``conn`` when the caller holds one, else on a pooled connection."""
        key_id = headers.get(KEY_HEADER)
        header = parse_signature(headers.get(SIGNATURE_HEADER))
        if not key_id or header is None:
            raise _refuse(
                "send X-Regulars-Key and X-Regulars-Signature: t=<unix s>,v1=<hex HMAC-SHA256>",
                "signature-required",
            )
        now = int(time.time())
        if now - header.timestamp > self.settings.pos_signature_max_age_s:
            raise _refuse("the signature is too old; sign each request when it is sent")
        if header.timestamp - now > self.settings.pos_signature_skew_s:
            raise _refuse("the signature's time is in the future; check the till's clock")
        if conn is None:
            row = await self.db.fetchrow(sql.KEY_FOR_SIGNATURE, key_id[:100])
        else:
            row = await conn.fetchrow(sql.KEY_FOR_SIGNATURE, key_id[:100])
        if row is None or row["revoked_at"] is not None or row["disabled_at"] is not None:
            raise _refuse("unknown or revoked key", "invalid-key")
        try:
            secret = self._open(bytes(row["secret_sealed"]))
        except SealError:
            # Sealed under another seal key: as good as unknown, and worth a look in the logs.
            raise _refuse("unknown or revoked key", "invalid-key") from None
        till = Till(
            row["integration_id"],
            row["brand_id"],
            row["location_id"],
            key_id,
            row["vendor_store_id"],
        )
        return PendingCheck(till, header, BodyMac(secret, header.timestamp))

    def _open(self, sealed: bytes) -> str:
        secret = self._opened.get(sealed)
        if secret is None:
            secret = self.sealer.open(sealed)
            if len(self._opened) >= self.settings.pos_key_cache_entries:
                self._opened.clear()
            self._opened[sealed] = secret
        return secret

    async def close(self, pending: PendingCheck) -> Till:
        """After the whole body went through ``pending.mac``: 401 unless it matches."""
        if not pending.mac.matches(pending.header):
            raise _refuse("the signature does not match the body")
        return pending.till

    async def remember(self, pending: PendingCheck) -> None:
        """Mark the signature as used; 401 ``signature-replayed`` if it was used before."""
        signature = min(pending.header.signatures)
        key = f"rg:pos:sig:{pending.till.key_id}:{signature}"
        ttl_s = self.settings.pos_signature_seen_ttl_s
        # Over the hot path's pipelined line (RedisLine): every till request asks this, and a
        # pooled redis-py call costs several times the client CPU. The reply is OK or nil.
        line = self.gate.line
        try:
            fresh = await self.gate.run(lambda: line.keyed(key, "SET", key, 1, "EX", ttl_s, "NX"))
        except RedisUnavailable:
            raise Problem(
                503,
                "signature-check-unavailable",
                "replayed requests cannot be told apart just now; retry shortly",
                retry_after_s=2,
            ) from None
        if fresh is None:
            raise _refuse(
                "this signature was used before; sign each request afresh", "signature-replayed"
            )

    async def verify(
        self, headers: Any, body: bytes, conn: asyncpg.Connection | None = None
    ) -> Till:
        """The whole check for a request whose body is at hand (the key read on ``conn``)."""
        pending = await self.open(headers, conn)
        pending.mac.update(body)
        till = await self.close(pending)
        await self.remember(pending)
        return till


async def requires_till(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard: the request is signed by an active key of an integration (see module doc)."""
    auth: TillAuth = connection.app.state.services.till_auth
    request: Request[Any, Any, Any] = connection  # type: ignore[assignment]
    body = await request.body()
    connection.state[_STATE_KEY] = await auth.verify(connection.headers, body)


def till_of(request: Request[Any, Any, Any]) -> Till:
    """The ``till`` dependency of a route behind :func:`requires_till`."""
    till = request.state.get(_STATE_KEY)
    if not isinstance(till, Till):
        raise Problem(401, "signature-required", "this call must be signed by a till")
    return till

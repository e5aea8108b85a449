"""Who is calling from a till: the signed-request check (DESIGN §10), as a Litestar guard.

Order of the checks: the key (unknown, revoked or its integration disabled: 401), the
timestamp (older than ``pos_signature_max_age_s`` or too far ahead: 401), the HMAC over
``"<t>." + raw body`` (401), then the signature is remembered in Redis with ``SET NX`` for
``pos_signature_seen_ttl_s`` (seen before: 401). Nothing is stored on any refusal.

Redis down: **fail closed**, 503 ``signature-check-unavailable`` with Retry-After. Without
Redis a captured request could be replayed within its five minutes; receipts are idempotent,
but a tender post or void is not a thing to replay blind, and tills already queue and retry
(an offline till resends later with a fresh signature), so a short refusal costs nothing.

Known keys (issue 23): what a key row says apart from its revocation (its secret, opened, and
its integration) never changes, since a rotation makes a new key id. :meth:`TillAuth.verify`
with ``known=True`` (the receipt lane) takes it from a bounded cache, checks age, HMAC and
replay guard as always, and answers a :class:`Till` with ``key_read=False``: the receipt's own
statement then checks the key is still active (sql.KEY_ACTIVE, in WRITE_ANONYMOUS_SALE and
GUEST_SALE_READ) before anything is written, and any other way of taking it first reads the
key row (:func:`reread_key`). So revocation stays immediate; what changes is the order for a
revoked key's request that is also badly signed or replayed: that one is refused 401 for its
signature rather than ``invalid-key``.

Reuse: non-streaming routes declare ``guards=[requires_till]`` and take the ``till``
dependency; a streaming route calls :meth:`TillAuth.open` and :meth:`TillAuth.close`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, TypeGuard
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

__all__ = [
    "KEY_HEADER",
    "SIGNATURE_HEADER",
    "Till",
    "TillAuth",
    "key_refused",
    "requires_till",
    "reread_key",
    "till_of",
]

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
    # False: the key came from TillAuth's cache, unread for this request; whatever takes the
    # request checks the key is active (in its statement, or by :func:`reread_key`).
    key_read: bool = True


@dataclass(frozen=True, slots=True)
class _KnownKey:
    """A key row as read, less its revocation: none of this changes for a key id."""

    sealed: bytes
    secret: str
    till: Till


@dataclass(slots=True)
class PendingCheck:
    """A request whose key and timestamp passed; its body's MAC is being computed."""

    till: Till
    header: SignatureHeader
    mac: BodyMac


def _refuse(detail: str, slug: str = "invalid-signature") -> Problem:
    return Problem(401, slug, detail)


def key_refused() -> Problem:
    """The 401 for a key that is unknown, revoked or of a disabled integration."""
    return _refuse("unknown or revoked key", "invalid-key")


def _active(row: asyncpg.Record | None) -> TypeGuard[asyncpg.Record]:
    return row is not None and row["revoked_at"] is None and row["disabled_at"] is None


async def reread_key(conn: asyncpg.Connection, till: Till) -> Till:
    """``till`` once its key row, read on ``conn``, says the key is active (else 401
    ``invalid-key``): for a Till from the cache (``key_read=False``) taken another way than
    the statements that check the key themselves."""
    if till.key_read:
        return till
    if not _active(await conn.fetchrow(sql.KEY_FOR_SIGNATURE, till.key_id)):
        raise key_refused()
    return dataclasses.replace(till, key_read=True)


class TillAuth:
    def __init__(self, settings: Settings, db: Database, gate: RedisGate, sealer: Sealer) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.sealer = sealer
        # Keys read before, by key id: a secret is opened (decrypted) once, not per request,
        # and the lane's receipts need not read the row at all (module doc). Only keys that
        # were active when read get here, so unknown ids cannot fill it.
        self._known: dict[str, _KnownKey] = {}

    async def open(
        self, headers: Any, conn: asyncpg.Connection | None = None, *, known: bool = False
    ) -> PendingCheck:
        """Check the key and the timestamp; the caller feeds the raw body to ``.mac``. The key
        is read on ``conn`` when the caller holds one, else on a pooled connection; with
        ``known``, a key in the cache is not read (its Till says ``key_read=False``)."""
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
        key = self._known.get(key_id) if known else None
        if key is None:
            key = await self._read(key_id[:100], conn)
            till = key.till
        else:
            till = dataclasses.replace(key.till, key_read=False)
        return PendingCheck(till, header, BodyMac(key.secret, header.timestamp))

    async def _read(self, key_id: str, conn: asyncpg.Connection | None) -> _KnownKey:
        """The key row, as it is now (401 unless active), remembered for ``open(known=True)``."""
        if conn is None:
            row = await self.db.fetchrow(sql.KEY_FOR_SIGNATURE, key_id)
        else:
            row = await conn.fetchrow(sql.KEY_FOR_SIGNATURE, key_id)
        if not _active(row):
            raise key_refused()
        sealed = bytes(row["secret_sealed"])
        key = self._known.get(key_id)
        if key is not None and key.sealed == sealed:
            return key
        try:
            secret = self.sealer.open(sealed)
        except SealError:
            # Sealed under another seal key: as good as unknown, and worth a look in the logs.
            raise key_refused() from None
        till = Till(
            row["integration_id"],
            row["brand_id"],
            row["location_id"],
            key_id,
            row["vendor_store_id"],
        )
        if len(self._known) >= self.settings.pos_key_cache_entries:
            self._known.clear()
        key = self._known[key_id] = _KnownKey(sealed, secret, till)
        return key

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
        self,
        headers: Any,
        body: bytes,
        conn: asyncpg.Connection | None = None,
        *,
        known: bool = False,
    ) -> Till:
        """The whole check for a request whose body is at hand (the key read on ``conn``;
        ``known``: not read when cached, see :meth:`open`)."""
        pending = await self.open(headers, conn, known=known)
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

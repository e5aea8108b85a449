"""Points as a tender at the till (DESIGN §10): look the guest up, hold points (pending), then
the till posts or voids the hold; a hold the till never resolves is voided at its timeout by
the worker's hold-timeout job (loyalty.jobs.void_timed_out_holds reads every open hold).
Lookups and holds are rate-limited per integration (a phone number is guessable); without
Redis the limits let requests through, as the counter's do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec

from server.guests import identities
from server.infra import idempotency
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.problems import Problem
from server.infra.ratelimit import limit
from server.infra.redis import RedisGate
from server.pos import identify
from server.pos.auth import Till
from server.pos.model import masked_name
from server.pos.points import Move, PointsPort
from server.settings import Settings
from shared import contract
from shared.pos import PosGuestLookupIn, PosGuestLookupOut, PosRedemptionIn

__all__ = ["Tender"]

_encode = msgspec.json.Encoder().encode
_CODE = "pos_redemption"
# Hold ids derive from the integration and the Idempotency-Key: a retry holds the same one.
_NAMESPACE = uuid.UUID("6f0b7d52-3c1e-4a8e-b0c4-2d9f5e8a7c31")


class Tender:
    def __init__(
        self, settings: Settings, db: Database, gate: RedisGate, points: PointsPort
    ) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.points = points

    async def lookup(self, till: Till, body: PosGuestLookupIn) -> PosGuestLookupOut:
        """The guest named by exactly one of QR, phone or card, masked, with spendable points.
        Refuses 422 ``lookup-needs-one``, 404 ``guest-not-found`` (also for a stale QR), 429
        ``too-many-pos-lookups``."""
        given = [v for v in (body.qr_code, body.phone, body.card_number) if v]
        if len(given) != 1:
            raise Problem(
                422, "lookup-needs-one", "send exactly one of qr_code, phone, card_number"
            )
        await limit(
            self.gate,
            "pos-lookups",
            till.integration_id,
            self.settings.pos_lookups_per_minute,
            60,
            "guest lookups this minute",
        )
        async with self.db.connection() as conn:
            guest_id = await self._find(conn, till, body)
            if guest_id is None:
                raise Problem(404, "guest-not-found", "no guest matches")
            name = await identities.names(conn, till.brand_id, guest_id)
            assert name is not None, "found in this brand just now"
            wallet = await self.points.wallet(conn, till.brand_id, guest_id)
            program = await self.points.program(conn, till.brand_id)
        return PosGuestLookupOut(
            guest_id=guest_id,
            display_name=masked_name(*name),
            tier=wallet.tier,
            points_available=max(wallet.spendable, 0),
            max_points_share_pct=program.max_points_share_pct,
        )

    async def _find(
        self, conn: asyncpg.Connection, till: Till, body: PosGuestLookupIn
    ) -> UUID | None:
        if body.qr_code:
            at = datetime.now(UTC)
            guest_id, _ = await identify.by_qr(conn, self.settings, till.brand_id, body.qr_code, at)
            return guest_id
        if body.card_number:
            return await identify.by_card(conn, till.brand_id, body.card_number)
        assert body.phone is not None
        return await identify.by_phone(conn, till.brand_id, body.phone)

    async def reserve(self, till: Till, body: PosRedemptionIn, key: str) -> Stored:
        """Hold ``body.points`` of a guest of the till's brand (pending, voided after
        ``pos_redemption_timeout_s`` unless posted). Refuses 404 ``guest-not-found``, 422
        ``insufficient-points``; the same Idempotency-Key answers the first answer."""
        scope = f"pos:{till.integration_id}:redemptions"
        digest = idempotency.request_hash("POST /v1/pos/redemptions", body)
        await limit(
            self.gate,
            "pos-redemptions",
            till.integration_id,
            self.settings.pos_redemptions_per_minute,
            60,
            "points redemptions this minute",
        )
        async with self.db.connection() as conn:
            known = await identities.names(conn, till.brand_id, body.guest_id)
        if known is None:
            raise Problem(404, "guest-not-found", f"no guest {body.guest_id}")
        transfer_id = uuid.uuid5(_NAMESPACE, f"{scope}:{key}")

        async def answer(conn: asyncpg.Connection, spendable: int) -> Stored:
            transfer = contract.Transfer(
                id=transfer_id,
                guest_id=body.guest_id,
                code=_CODE,
                points=-body.points,
                state="pending",
                created_at=datetime.now(UTC),
                points_available=spendable,
            )
            return Stored(201, _encode(transfer))

        return await self.points.hold(
            brand_id=till.brand_id,
            guest_id=body.guest_id,
            points=body.points,
            location_id=till.location_id,
            transfer_id=transfer_id,
            timeout_s=self.settings.pos_redemption_timeout_s,
            request=IdempotentRequest(scope, key, digest),
            answer=answer,
        )

    async def resolve(self, till: Till, transfer_id: UUID, *, post: bool) -> contract.Transfer:
        """Post or void a hold of this till's location exactly once.

        Asking again for what already happened answers the same; asking for the other is 409
        ``already-posted`` / ``already-voided``; posting a hold past its timeout voids it and
        is 409 ``redemption-expired``. Another location's hold is 404.
        """
        wanted = "post_pending" if post else "void_pending"
        async with self.db.transaction() as conn:
            held = await self.points.held(conn, transfer_id)
            if held is None or held.code != _CODE or held.location_id != till.location_id:
                raise Problem(404, "redemption-not-found", f"no redemption {transfer_id}")
            moves: tuple[Move, ...] = ()
            resolution, expired = held.resolution, False
            if resolution is None:
                resolved = await self.points.resolve(conn, transfer_id, post=post)
                if resolved is not None:
                    resolution, expired, moves = (
                        resolved.resolution,
                        resolved.expired,
                        resolved.moves,
                    )
                else:  # resolved concurrently, or by the timeout job
                    again = await self.points.held(conn, transfer_id)
                    resolution = again.resolution if again else None
            available = await self.points.spendable(conn, held.guest_id)
        await self.points.mirror(moves)
        if expired:
            raise Problem(409, "redemption-expired", "the hold timed out and was released")
        if resolution != wanted:
            slug = "already-voided" if resolution == "void_pending" else "already-posted"
            raise Problem(409, slug, f"this redemption was already {slug.split('-')[1]}")
        return contract.Transfer(
            id=transfer_id,
            guest_id=held.guest_id,
            code=_CODE,
            points=-held.points,
            state="posted" if post else "voided",
            created_at=held.resolved_at or datetime.now(UTC),
            points_available=available,
        )

"""Points at the counter: accruals for till receipts and two-phase redemptions, each mirrored
to Redis after its commit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from server.catalog.locations import Locations
from server.counter import sql
from server.counter.model import (
    Visit,
    require_scan_time,
)
from server.counter.profiles import record_visit
from server.infra import idempotency
from server.infra.audit import audit
from server.infra.db import Database
from server.infra.idempotency import Stored
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.ratelimit import limit
from server.infra.redis import RedisGate
from server.loyalty.model import earn_points
from server.loyalty.repository import AccountState
from server.loyalty.service import Admission, Loyalty, add_months, insufficient_points
from server.settings import Settings
from shared import contract

__all__ = ["CounterPoints"]

_encode = msgspec.json.Encoder().encode
# Redemption transfer ids derive from the Idempotency-Key, so a retry reserves the same hold.
_REDEMPTION_NAMESPACE = uuid.UUID("b1d0c8f4-5a3e-4e0b-8f57-3c2a9e7d6a10")


class CounterPoints:
    """Counter accruals and two-phase redemptions; Redis is mirrored after each commit."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        gate: RedisGate,
        loyalty: Loyalty,
        locations: Locations,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.db = db
        self.loyalty = loyalty
        self.locations = locations

    async def accrue(
        self, staff: Principal, guest_id: UUID, body: contract.AccrualIn, key: str
    ) -> Stored:
        """Credit the points a till receipt earns, once per key and once per receipt.

        Refuses 404 for a location or guest the staff may not touch, 409
        ``receipt-already-accrued`` for a receipt already accrued at this location.
        """
        scope = f"staff:{staff.subject_id}:accruals"
        digest = idempotency.request_hash(f"POST /v1/guests/{guest_id}/accruals", body)
        now = datetime.now(UTC)
        require_scan_time(
            body.scanned_at,
            now,
            self.settings.scan_replay_max_age_s,
            self.settings.scan_clock_skew_s,
        )
        place = await self.locations.of_staff(staff, body.location_id)
        state: AccountState | None = None
        async with self.db.transaction() as conn:
            replay = await idempotency.begin(conn, scope, key, digest)
            if replay is not None:
                return replay
            guest = await conn.fetchrow(sql.GUEST_ACCOUNT, guest_id)
            if guest is None or guest["brand_id"] != staff.brand_id:
                raise Problem(404, "guest-not-found", f"no guest {guest_id}")
            program = await self.loyalty.programs.get(staff.brand_id, conn)
            tier, _, _ = await self.loyalty.tier(conn, program, guest["account_id"])
            points = earn_points(program, body.amount_paid_minor, tier)
            transfer_id = uuid.uuid4()
            claimed = await conn.fetchval(
                sql.CLAIM_RECEIPT,
                body.location_id,
                body.receipt_ref,
                staff.brand_id,
                guest_id,
                transfer_id if points else None,
                body.amount_paid_minor,
                points,
                staff.subject_id,
                staff.device_id,
                body.scanned_at,
            )
            if claimed is None:
                raise Problem(
                    409,
                    "receipt-already-accrued",
                    f"receipt {body.receipt_ref!r} was already accrued at this location",
                )
            if points:
                state = await self.loyalty.ledger.credit(
                    conn,
                    transfer_id=transfer_id,
                    brand_id=staff.brand_id,
                    account_id=guest["account_id"],
                    points=points,
                    code="accrual",
                    source="issued",
                    location_id=body.location_id,
                    expires_at=add_months(now, program.lot_expiry_months),
                )
            at = body.scanned_at or now
            visit = Visit(
                at=at,
                local_at=at.astimezone(place.tz),
                amount_minor=body.amount_paid_minor,
                points=points,
            )
            await record_visit(conn, guest_id, visit, now, place.tz)
            await audit(
                conn,
                staff,
                "points.accrue",
                guest_id,
                {
                    "points": points,
                    "amount_paid_minor": body.amount_paid_minor,
                    "location_id": str(body.location_id),
                    "receipt_ref": body.receipt_ref,
                },
            )
            available = state.spendable if state else await conn.fetchval(sql.SPENDABLE, guest_id)
            transfer = contract.Transfer(
                id=transfer_id,
                guest_id=guest_id,
                code="accrual",
                points=points,
                state="posted",
                created_at=now,
                points_available=available,
            )
            stored = Stored(201, _encode(transfer))
            await idempotency.finish(conn, scope, key, 201, stored.body)
        if state is not None:
            await self.loyalty.mirror(guest_id, "credit", transfer_id, state, points)
        return stored

    async def reserve(
        self, staff: Principal, guest_id: UUID, body: contract.RedemptionIn, key: str
    ) -> Stored:
        """Hold points for a redemption (pending, voided after ``redemption_timeout_s``).

        Redis admits first (a fast refusal), PostgreSQL's guarded hold is the last word.
        Refuses 422 ``insufficient-points`` (also while the balance is negative).
        """
        scope = f"staff:{staff.subject_id}:redemptions"
        digest = idempotency.request_hash(f"POST /v1/guests/{guest_id}/redemptions", body)
        await limit(
            self.gate,
            "redemptions",
            staff.subject_id,
            self.settings.redemptions_per_minute,
            60,
            "redemptions this minute",
        )
        await self.locations.of_staff(staff, body.location_id)
        guest = await self.db.fetchrow(sql.GUEST_ACCOUNT, guest_id)
        if guest is None or guest["brand_id"] != staff.brand_id:
            raise Problem(404, "guest-not-found", f"no guest {guest_id}")
        transfer_id = uuid.uuid5(_REDEMPTION_NAMESPACE, f"{scope}:{key}")
        admission, replay = await self.loyalty.admit_or_replay(
            guest_id, transfer_id, body.points, (scope, key, digest)
        )
        if replay is not None:
            return replay
        return await self._hold(
            staff, guest, guest_id, body, (scope, key, digest), transfer_id, admission
        )

    async def _hold(
        self,
        staff: Principal,
        guest: asyncpg.Record,
        guest_id: UUID,
        body: contract.RedemptionIn,
        request: tuple[str, str, bytes],
        transfer_id: UUID,
        admission: Admission,
    ) -> Stored:
        scope, key, digest = request
        now = datetime.now(UTC)
        # Set only once the transaction has committed: a refusal voids the Redis hold this
        # request made; a failure that leaves the commit in doubt reloads the wallet instead.
        state: AccountState | None = None
        failure: BaseException | None = None
        try:
            async with self.db.transaction() as conn:
                replay = await idempotency.begin(conn, scope, key, digest)
                if replay is not None:
                    return replay
                held = await self.loyalty.ledger.hold(
                    conn,
                    transfer_id=transfer_id,
                    brand_id=staff.brand_id,
                    account_id=guest["account_id"],
                    points=body.points,
                    code="redemption",
                    location_id=body.location_id,
                    timeout_at=now + timedelta(seconds=self.settings.redemption_timeout_s),
                )
                if held is None:
                    raise insufficient_points(
                        body.points, await conn.fetchval(sql.SPENDABLE, guest_id)
                    )
                await audit(
                    conn,
                    staff,
                    "points.redeem.reserve",
                    guest_id,
                    {
                        "transfer_id": str(transfer_id),
                        "points": body.points,
                        "location_id": str(body.location_id),
                    },
                )
                transfer = contract.Transfer(
                    id=transfer_id,
                    guest_id=guest_id,
                    code="redemption",
                    points=-body.points,
                    state="pending",
                    created_at=now,
                    points_available=held.spendable,
                )
                stored = Stored(201, _encode(transfer))
                await idempotency.finish(conn, scope, key, 201, stored.body)
            state = held
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await self.loyalty.settle_admission(guest_id, transfer_id, admission, state, failure)
        return stored

    async def resolve(
        self, staff: Principal, transfer_id: UUID, *, post: bool
    ) -> contract.Transfer:
        """Post or void a held redemption exactly once.

        Asking again for what already happened answers the same final state; asking for the
        other is 409 ``already-posted`` / ``already-voided``. A hold past its timeout is voided
        and posting it is 409 ``redemption-expired``.
        """
        wanted = "post_pending" if post else "void_pending"
        ledger = self.loyalty.ledger
        now = datetime.now(UTC)
        state: AccountState | None = None
        expired = False
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(sql.REDEMPTION, transfer_id)
            if (
                row is None
                or row["code"] != "redemption"
                or row["brand_id"] != staff.brand_id
                or row["location_id"] is None
                or not staff.covers(row["location_id"])
            ):
                raise Problem(404, "redemption-not-found", f"no redemption {transfer_id}")
            resolution = row["resolution"]
            if resolution is None:
                expired = post and row["timeout_at"] is not None and row["timeout_at"] < now
                hold = await ledger.pending(conn, transfer_id)
                assert hold is not None
                state = await ledger.resolve(conn, hold, post=post and not expired)
                if state is None:  # a concurrent request resolved it first
                    row = await conn.fetchrow(sql.REDEMPTION, transfer_id)
                    assert row is not None
                    resolution = row["resolution"]
                else:
                    resolution = "void_pending" if expired else wanted
                    await audit(
                        conn,
                        staff,
                        f"points.redeem.{'void' if expired else wanted[:4]}",
                        row["guest_id"],
                        {"transfer_id": str(transfer_id), "points": row["amount"]},
                    )
            available = await conn.fetchval(sql.SPENDABLE, row["guest_id"])
        if state is not None:
            op: Literal["post", "void"] = "post" if resolution == "post_pending" else "void"
            await self.loyalty.mirror(row["guest_id"], op, transfer_id, state)
        if expired:
            raise Problem(409, "redemption-expired", "the hold timed out and was released")
        if resolution != wanted:
            slug = "already-voided" if resolution == "void_pending" else "already-posted"
            raise Problem(409, slug, f"this redemption was already {slug.split('-')[1]}")
        return contract.Transfer(
            id=transfer_id,
            guest_id=row["guest_id"],
            code="redemption",
            points=-row["amount"],
            state="posted" if post else "voided",
            created_at=row["resolved_at"] or now,
            points_available=available,
        )

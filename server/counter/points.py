"""Points at the counter: accruals for till receipts and two-phase redemptions. Every points
movement goes through the loyalty service (DESIGN §6), which mirrors Redis after the commit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from server.catalog.locations import Locations
from server.counter import sql
from server.counter.model import Visit, require_scan_time
from server.counter.profiles import record_visit
from server.infra import idempotency
from server.infra.audit import audit
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import ROLE_RANK, Principal
from server.infra.problems import Problem
from server.infra.ratelimit import limit
from server.infra.redis import RedisGate
from server.loyalty.model import (
    AccountState,
    Movement,
    Program,
    accrual_over_limit,
    earn_points,
    tier_for,
)
from server.loyalty.service import Loyalty, Resolution, Spend
from server.settings import Settings
from shared import contract

__all__ = ["CounterPoints", "require_within_limits"]

_encode = msgspec.json.Encoder().encode
# Redemption transfer ids derive from the Idempotency-Key, so a retry reserves the same hold.
_REDEMPTION_NAMESPACE = uuid.UUID("b1d0c8f4-5a3e-4e0b-8f57-3c2a9e7d6a10")
ACCRUALS_ROUTE = "POST /v1/guests/{guest_id}/accruals"
REDEMPTIONS_ROUTE = "POST /v1/guests/{guest_id}/redemptions"


async def require_within_limits(
    conn: asyncpg.Connection, staff: Principal, program: Program, guest_id: UUID, points: int
) -> None:
    """403 ``accrual-needs-approval`` when an accrual of ``points`` passes a limit of the staff
    member's role (the programme's ``accrual_limits``: largest accrual, accruals per staff
    member per hour, per guest per day).

    Approval is simply someone of a higher role making the accrual: a shift lead or manager
    signs in on the same kiosk (their PIN or password) and sends it with their own token, so
    the audit entry names them, and their own role's limits apply. The problem lists who may.
    Two accruals at the same instant may both pass a count limit by one; the amount limit holds.
    """
    limits = program.accrual_limits.get(staff.role)
    if limits is None:
        return
    counts = await conn.fetchrow(sql.ACCRUAL_COUNTS, staff.subject_id, guest_id)
    assert counts is not None  # an aggregate always has its row
    over = accrual_over_limit(
        limits, points, counts["by_staff_last_hour"], counts["for_guest_last_day"]
    )
    if over is None:
        return
    approvers = [
        role
        for role, rank in sorted(ROLE_RANK.items(), key=lambda item: item[1])
        if rank > ROLE_RANK.get(staff.role, 0)
        and accrual_over_limit(program.accrual_limits.get(role), points, 0, 0) is None
    ]
    raise Problem(
        403,
        "accrual-needs-approval",
        f"this accrual is over the {staff.role} limit {over}; "
        f"a {' or '.join(approvers)} must make it",
        limit=over,
        approver_roles=approvers,
        points=points,
    )


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
        ``receipt-already-accrued`` for a receipt already accrued in this brand, and 403
        ``accrual-needs-approval`` above the staff member's role limits (see
        :func:`require_within_limits`).
        """
        request = IdempotentRequest.of(
            f"staff:{staff.subject_id}:accruals",
            key,
            ACCRUALS_ROUTE.format(guest_id=guest_id),
            body,
        )
        now = datetime.now(UTC)
        require_scan_time(
            body.scanned_at,
            now,
            self.settings.scan_replay_max_age_s,
            self.settings.scan_clock_skew_s,
        )
        place = await self.locations.of_staff(staff, body.location_id)
        async with self.db.transaction() as conn:
            replay = await idempotency.begin_request(conn, request)
            if replay is not None:
                return replay
            guest = await self._guest(conn, staff, guest_id)
            moved, transfer = await self._credit_receipt(conn, staff, guest, body, now)
            at = body.scanned_at or now
            visit = Visit(
                at=at, local_at=at.astimezone(place.tz), amount_minor=body.amount_paid_minor,
                points=transfer.points,
            )  # fmt: skip
            await record_visit(conn, guest_id, visit, now, place.tz)
            await audit(
                conn,
                staff,
                "points.accrue",
                guest_id,
                {
                    "points": transfer.points,
                    "role": staff.role,
                    "amount_paid_minor": body.amount_paid_minor,
                    "location_id": str(body.location_id),
                    "receipt_ref": body.receipt_ref,
                },
            )
            stored = Stored(201, _encode(transfer))
            await idempotency.finish_request(conn, request, stored)
        await self.loyalty.mirror_all([moved])
        return stored

    async def _credit_receipt(
        self,
        conn: asyncpg.Connection,
        staff: Principal,
        guest: asyncpg.Record,
        body: contract.AccrualIn,
        now: datetime,
    ) -> tuple[Movement | None, contract.Transfer]:
        """Claim the receipt and earn what it pays for at the guest's tier (nothing for a
        receipt that earns 0 points, but the claim all the same)."""
        guest_id = guest["guest_id"]
        program = await self.loyalty.programs.get(staff.brand_id, conn)
        tier, _, earned = await self.loyalty.tier(conn, program, guest["account_id"])
        points = earn_points(program, body.amount_paid_minor, tier)
        await require_within_limits(conn, staff, program, guest_id, points)
        transfer_id = uuid.uuid4()
        await self._claim_receipt(
            conn, staff, guest_id, body, transfer_id if points else None, points
        )
        moved = None
        if points:
            moved = await self.loyalty.earn(
                conn,
                brand_id=staff.brand_id,
                guest_id=guest_id,
                account_id=guest["account_id"],
                points=points,
                code="accrual",
                location_id=body.location_id,
                now=now,
                transfer_id=transfer_id,
            )
        available = moved.state.spendable if moved else await self.loyalty.spendable(conn, guest_id)
        after, following = tier_for(program, earned + points)
        transfer = contract.Transfer(
            id=transfer_id, guest_id=guest_id, code="accrual", points=points, state="posted",
            created_at=now, points_available=available, tier=after.name,
            next_tier=following.name if following else None,
            points_to_next_tier=following.min_points - earned - points if following else None,
        )  # fmt: skip
        return moved, transfer

    async def _guest(
        self, conn: asyncpg.Connection, staff: Principal, guest_id: UUID
    ) -> asyncpg.Record:
        guest = await conn.fetchrow(sql.GUEST_ACCOUNT, guest_id)
        if guest is None or guest["brand_id"] != staff.brand_id:
            raise Problem(404, "guest-not-found", f"no guest {guest_id}")
        return guest

    async def _claim_receipt(
        self,
        conn: asyncpg.Connection,
        staff: Principal,
        guest_id: UUID,
        body: contract.AccrualIn,
        transfer_id: UUID | None,
        points: int,
    ) -> None:
        claimed = await conn.fetchval(
            sql.CLAIM_RECEIPT, body.location_id, body.receipt_ref, staff.brand_id, guest_id,
            transfer_id, body.amount_paid_minor, points, staff.subject_id, staff.device_id,
            body.scanned_at,
        )  # fmt: skip
        if claimed is None:
            raise Problem(
                409,
                "receipt-already-accrued",
                f"receipt {body.receipt_ref!r} was already accrued in this brand",
            )

    async def reserve(
        self, staff: Principal, guest_id: UUID, body: contract.RedemptionIn, key: str
    ) -> Stored:
        """Hold points for a redemption (pending, voided after ``redemption_timeout_s``).

        Redis admits first (a fast refusal), PostgreSQL's guarded hold is the last word.
        Refuses 422 ``insufficient-points`` (also while the balance is negative).
        """
        request = IdempotentRequest.of(
            f"staff:{staff.subject_id}:redemptions",
            key,
            REDEMPTIONS_ROUTE.format(guest_id=guest_id),
            body,
        )
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
        transfer_id = uuid.uuid5(_REDEMPTION_NAMESPACE, f"{request.scope}:{key}")
        async with self.loyalty.spend(guest_id, transfer_id, body.points, request) as spend:
            if spend.replay is not None:
                return spend.replay
            async with self.db.transaction() as conn:
                replay = await idempotency.begin_request(conn, request)
                if replay is not None:
                    return replay
                held, stored = await self._hold(conn, staff, guest, body, spend)
                await idempotency.finish_request(conn, request, stored)
            spend.committed(held)
        return stored

    async def _hold(
        self,
        conn: asyncpg.Connection,
        staff: Principal,
        guest: asyncpg.Record,
        body: contract.RedemptionIn,
        spend: Spend,
    ) -> tuple[AccountState, Stored]:
        """The redemption's hold and its audit entry; the response to store."""
        now = datetime.now(UTC)
        held = await spend.hold(
            conn,
            brand_id=staff.brand_id,
            account_id=guest["account_id"],
            code="redemption",
            location_id=body.location_id,
            timeout_at=now + timedelta(seconds=self.settings.redemption_timeout_s),
        )
        detail = {
            "transfer_id": str(spend.transfer_id),
            "points": body.points,
            "location_id": str(body.location_id),
        }
        await audit(conn, staff, "points.redeem.reserve", spend.guest_id, detail)
        transfer = contract.Transfer(
            id=spend.transfer_id, guest_id=spend.guest_id, code="redemption",
            points=-body.points, state="pending", created_at=now,
            points_available=held.spendable,
        )  # fmt: skip
        return held, Stored(201, _encode(transfer))

    async def resolve(
        self, staff: Principal, transfer_id: UUID, *, post: bool
    ) -> contract.Transfer:
        """Post or void a held redemption exactly once.

        Asking again for what already happened answers the same final state; asking for the
        other is 409 ``already-posted`` / ``already-voided``. A hold past its timeout is voided
        and posting it is 409 ``redemption-expired``.
        """
        now = datetime.now(UTC)
        async with self.db.transaction() as conn:
            hold = await self.loyalty.hold_of(conn, transfer_id)
            if (
                hold is None
                or hold.code != "redemption"
                or hold.brand_id != staff.brand_id
                or hold.location_id is None
                or not staff.covers(hold.location_id)
            ):
                raise Problem(404, "redemption-not-found", f"no redemption {transfer_id}")
            resolution = await self.loyalty.resolve(conn, hold, post=post, now=now)
            if resolution.movement is not None:
                action = "void" if resolution.outcome == "expired" else resolution.outcome[:4]
                await audit(
                    conn,
                    staff,
                    f"points.redeem.{action}",
                    hold.guest_id,
                    {"transfer_id": str(transfer_id), "points": hold.amount},
                )
            available = await self.loyalty.spendable(conn, hold.guest_id)
        await self.loyalty.mirror_all([resolution.movement])
        _refuse_other_outcome(resolution, post=post)
        return contract.Transfer(
            id=transfer_id,
            guest_id=hold.guest_id,
            code="redemption",
            points=-hold.amount,
            state="posted" if post else "voided",
            created_at=hold.resolved_at or now,
            points_available=available,
        )


def _refuse_other_outcome(resolution: Resolution, *, post: bool) -> None:
    """409 unless the redemption ended as asked (asking again for it is answered as done)."""
    match resolution.outcome:
        case "expired":
            raise Problem(409, "redemption-expired", "the hold timed out and was released")
        case "posted" | "already_posted" if not post:
            raise Problem(409, "already-posted", "this redemption was already posted")
        case "voided" | "already_voided" if post:
            raise Problem(409, "already-voided", "this redemption was already voided")

"""Scheduled ledger jobs: expiring lots (oldest first) and voiding holds whose time is up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from server.loyalty import sql
from server.loyalty.service import Loyalty

__all__ = ["expire_lots", "recount_tier_points", "void_timed_out_holds"]


async def expire_lots(loyalty: Loyalty, batch_size: int, now: datetime | None = None) -> int:
    """Debit points whose lots have expired; returns the number of guests touched.

    What expires is what the expired lots gave minus everything consumed since, oldest first
    (model.remaining_lots), never more than is spendable.
    """
    now = now or datetime.now(UTC)
    guests = await loyalty.db.fetch(sql.EXPIRY_CANDIDATES, now, batch_size)
    touched = 0
    for row in guests:
        guest_id = row["guest_id"]
        async with loyalty.db.transaction() as conn:
            account = await conn.fetchrow(
                "SELECT id, brand_id, debits_posted + debits_pending AS consumed,"
                " credits_posted - debits_posted - debits_pending AS spendable"
                " FROM accounts WHERE guest_id = $1 FOR UPDATE",
                guest_id,
            )
            if account is None:
                continue
            expired_credits = int(await conn.fetchval(sql.EXPIRED_CREDITS, account["id"], now))
            due = min(expired_credits - account["consumed"], account["spendable"])
            if due <= 0:
                continue
            transfer_id = uuid.uuid4()
            state = await loyalty.ledger.debit(
                conn,
                transfer_id=transfer_id,
                brand_id=account["brand_id"],
                account_id=account["id"],
                points=due,
                code="expiry",
                sink="expired",
                guarded=True,
                reason="points expired",
            )
        if state is not None:
            touched += 1
            await loyalty.mirror(guest_id, "credit", transfer_id, state, -due)
    return touched


async def void_timed_out_holds(loyalty: Loyalty, batch_size: int) -> int:
    """Void pending transfers past their timeout (counter redemptions never confirmed)."""
    rows = await loyalty.db.fetch(sql.TIMED_OUT_HOLDS, batch_size)
    voided = 0
    for row in rows:
        async with loyalty.db.transaction() as conn:
            hold = await loyalty.ledger.pending(conn, row["id"])
            state = await loyalty.ledger.resolve(conn, hold, post=False) if hold else None
        if hold is not None and state is not None:
            voided += 1
            await loyalty.mirror(hold.guest_id, "void", hold.id, state)
    return voided


async def recount_tier_points(
    loyalty: Loyalty, batch_size: int, older_than_s: float = 86_400
) -> int:
    """Recount the tier-window points of the profiles not refreshed for ``older_than_s``."""
    async with loyalty.db.connection() as conn:
        result = await conn.execute(sql.RECOUNT_TIER_POINTS, older_than_s, batch_size)
    return int(result.split()[-1])

"""Scheduled ledger jobs: expiring lots (oldest first) and voiding holds whose time is up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

from server.loyalty import sql
from server.loyalty.service import Loyalty

__all__ = ["expire_lots", "recount_tier_points", "void_timed_out_holds"]

# Where a brand's first pass starts: before every lot.
_BEGINNING = datetime.min.replace(tzinfo=UTC)
_NO_ACCOUNT = UUID(int=0)


async def expire_lots(loyalty: Loyalty, batch_size: int, now: datetime | None = None) -> int:
    """Debit points whose lots have expired; returns the number of guests touched.

    What expires is what the expired lots gave minus everything consumed since, oldest first
    (model.remaining_lots), never more than is spendable. Each brand's pass reads only the
    lots that expired since its watermark, ``batch_size`` at a time, so its work follows what
    expires, not the ledger's history; plus the few guests whose expired points were held
    last time (a voided hold makes them due).
    """
    now = now or datetime.now(UTC)
    touched = 0
    for brand in await loyalty.db.fetch(sql.BRANDS):
        touched += await _expire_brand(loyalty, brand["id"], batch_size, now)
    return touched


async def _expire_brand(loyalty: Loyalty, brand_id: UUID, batch_size: int, now: datetime) -> int:
    touched = 0
    for row in await loyalty.db.fetch(sql.EXPIRY_RECHECKS, brand_id):
        touched += await _expire_account(loyalty, row["account_id"], now)
    mark = await loyalty.db.fetchrow(sql.EXPIRY_WATERMARK, brand_id)
    after: tuple[datetime, UUID] = (
        (mark["expires_at"], mark["account_id"]) if mark else (_BEGINNING, _NO_ACCOUNT)
    )
    while True:
        lots = await loyalty.db.fetch(sql.LOTS_EXPIRED_SINCE, brand_id, *after, now, batch_size)
        if not lots:
            return touched
        # A guest's expiry counts all of their lots expired by now: once per batch is enough,
        # and a lot of theirs cut off by the batch's end is already counted.
        for account_id in dict.fromkeys(lot["account_id"] for lot in lots):
            touched += await _expire_account(loyalty, account_id, now)
        after = (lots[-1]["expires_at"], lots[-1]["account_id"])
        async with loyalty.db.connection() as conn:
            await conn.execute(sql.ADVANCE_EXPIRY_WATERMARK, brand_id, *after)
        if len(lots) < batch_size:
            return touched


async def _expire_account(loyalty: Loyalty, account_id: UUID, now: datetime) -> int:
    """Expire what is due of one guest account; 1 when it took points, else 0."""
    async with loyalty.db.transaction() as conn:
        account = await conn.fetchrow(sql.EXPIRY_ACCOUNT, account_id)
        if account is None:
            return 0
        expired_credits = int(await conn.fetchval(sql.EXPIRED_CREDITS, account_id, now))
        consumed = account["debits_posted"] + account["debits_pending"]
        due = min(expired_credits - consumed, account["spendable"])
        # Expired points that are only held are due if the hold is voided: look again then.
        if account["debits_pending"] and expired_credits - account["debits_posted"] > max(due, 0):
            await conn.execute(sql.RECHECK_EXPIRY, account_id, account["brand_id"])
        else:
            await conn.execute(sql.RECHECKED_EXPIRY, account_id)
        if due <= 0:
            return 0
        transfer_id = uuid.uuid4()
        state = await loyalty.ledger.debit(
            conn,
            transfer_id=transfer_id,
            brand_id=account["brand_id"],
            account_id=account_id,
            points=due,
            code="expiry",
            sink="expired",
            guarded=True,
            reason="points expired",
        )
    if state is None:
        return 0
    await loyalty.mirror(account["guest_id"], "credit", transfer_id, state, -due)
    return 1


async def void_timed_out_holds(loyalty: Loyalty, batch_size: int) -> int:
    """Void pending transfers past their timeout (counter redemptions never confirmed)."""
    rows = await loyalty.db.fetch(sql.TIMED_OUT_HOLDS, batch_size)
    voided = 0
    for row in rows:
        async with loyalty.db.transaction() as conn:
            hold = await loyalty.ledger.pending(conn, row["id"])
            resolved = await loyalty.ledger.resolve(conn, hold, post=False) if hold else None
        if hold is not None and resolved is not None and resolved.state is not None:
            voided += 1
            await loyalty.mirror(hold.guest_id, "void", hold.id, resolved.state)
    return voided


async def recount_tier_points(
    loyalty: Loyalty, batch_size: int, older_than_s: float = 86_400
) -> int:
    """Recount the tier-window points of the profiles not refreshed for ``older_than_s``."""
    async with loyalty.db.connection() as conn:
        result = await conn.execute(sql.RECOUNT_TIER_POINTS, older_than_s, batch_size)
    return int(result.split()[-1])

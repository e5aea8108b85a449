"""What a guest's points look like: tier, wallet and ledger pages (read only)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID

import asyncpg

from server.infra.db import Database
from server.infra.problems import Problem
from server.infra.redis import RedisUnavailable
from server.loyalty import sql
from server.loyalty.hot import HotWallets
from server.loyalty.model import (
    AccountState,
    Lot,
    Program,
    Tier,
    remaining_lots,
    tier_for,
    tier_window_start,
)
from server.loyalty.programs import Programs
from shared import contract

__all__ = ["WalletReads"]


class WalletReads:
    """The reading half of :class:`server.loyalty.service.Loyalty`."""

    db: Database
    hot: HotWallets
    programs: Programs

    async def tier(
        self, conn: asyncpg.Connection, program: Program, account_id: UUID
    ) -> tuple[Tier, Tier | None, int]:
        """The guest's tier, the next one (None at the top) and the points earned in the
        program's tier window (earnings minus refund reversals)."""
        since = tier_window_start(program, datetime.now(UTC))
        earned = int(await conn.fetchval(sql.POINTS_EARNED_SINCE, account_id, since))
        current, following = tier_for(program, earned)
        return current, following, earned

    async def earned_in_windows(
        self, conn: asyncpg.Connection, program: Program, account_ids: Sequence[UUID]
    ) -> dict[UUID, int]:
        """The points each account earned in the program's tier window, in one query (what
        :meth:`tier` reads for one)."""
        since = tier_window_start(program, datetime.now(UTC))
        rows = await conn.fetch(sql.POINTS_EARNED_SINCE_MANY, list(account_ids), since)
        return {row["id"]: int(row["earned"]) for row in rows}

    async def mirrored(self, guest_id: UUID) -> AccountState | None:
        """The wallet's balances as Redis mirrors them (fresher than a read of PostgreSQL
        outside the spend's transaction); None when Redis has not loaded the wallet or does
        not answer. For display only: PostgreSQL decides every spend."""
        try:
            hot = await self.hot.read(guest_id)
        except RedisUnavailable:
            return None
        return None if hot is None else hot[0]

    async def wallet(self, guest_id: UUID, brand_id: UUID) -> contract.Wallet:
        """Spendable and held points (from Redis when it has them), tier and expiring lots."""
        program = await self.programs.get(brand_id)
        async with self.db.connection() as conn:
            account = await conn.fetchrow(sql.GUEST_ACCOUNT, guest_id)
            if account is None:
                raise Problem(404, "guest-not-found", "no such guest")
            current, following, earned = await self.tier(conn, program, account["id"])
            lots = [
                Lot(r["amount"], r["expires_at"])
                for r in await conn.fetch(sql.GUEST_LOTS, account["id"])
            ]
            consumed = int(await conn.fetchval(sql.CONSUMED, account["id"]))
        posted, pending = account["posted"], account["pending"]
        hot = await self.mirrored(guest_id)
        if hot is not None:
            posted, pending = hot.posted, hot.pending
        expiring = [
            contract.ExpiringPoints(points=lot.points, expires_at=lot.expires_at)
            for lot in remaining_lots(lots, consumed)[:3]
        ]
        return contract.Wallet(
            points_available=posted - pending,
            points_pending=pending,
            tier=current.name,
            next_tier=following.name if following else None,
            points_to_next_tier=(following.min_points - earned) if following else None,
            point_value_minor=program.point_value_minor,
            expiring=expiring,
        )

    async def ledger_page(
        self, guest_id: UUID, cursor: str | None, limit: int
    ) -> contract.LedgerPage:
        """Every points movement of the guest, newest first, ``limit`` at a time; refuses 422
        ``invalid-cursor`` for a cursor this API did not hand out."""
        after_at, after_id = _parse_cursor(cursor)
        async with self.db.connection() as conn:
            account_id = await conn.fetchval(
                "SELECT id FROM accounts WHERE guest_id = $1", guest_id
            )
            rows = await conn.fetch(sql.LEDGER_PAGE, account_id, after_at, after_id, limit + 1)
        entries = []
        for row in rows[:limit]:
            state: Literal["pending", "posted", "voided"] = "posted"
            if row["phase"] == "pending":
                state = {"post_pending": "posted", "void_pending": "voided"}.get(
                    row["resolution"] or "", "pending"
                )  # type: ignore[assignment]
            sign = 1 if row["is_credit"] else -1
            entries.append(
                contract.LedgerEntry(
                    id=row["id"],
                    code=row["code"],
                    points=sign * row["amount"],
                    state=state,
                    created_at=row["created_at"],
                    order_id=row["order_id"],
                    reason=row["reason"],
                )
            )
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            # Microseconds since the epoch: a cursor that needs no URL escaping.
            micros = (last["created_at"] - _EPOCH) // timedelta(microseconds=1)
            next_cursor = f"{micros}_{last['id']}"
        return contract.LedgerPage(entries=entries, next_cursor=next_cursor)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_cursor(cursor: str | None) -> tuple[datetime | None, UUID | None]:
    if not cursor:
        return None, None
    try:
        micros, _, ident = cursor.partition("_")
        return _EPOCH + timedelta(microseconds=int(micros)), UUID(ident)
    except (ValueError, OverflowError):
        raise Problem(422, "invalid-cursor", "the cursor is not one this API handed out") from None

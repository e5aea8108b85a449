"""The double-entry, two-phase ledger on asyncpg (DESIGN §3). Every method runs on the caller's
connection, inside the caller's transaction: services decide where the transaction ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from server.loyalty import sql
from server.loyalty.model import AccountState

__all__ = ["Credit", "Hold", "Ledger", "Resolved", "Snapshot"]

SystemAccount = Literal["issued", "redeemed", "expired", "adjustments"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    account_id: UUID
    state: AccountState
    holds: list[tuple[UUID, int]]


@dataclass(frozen=True, slots=True)
class Credit:
    """One single-phase credit of a set written together (:meth:`Ledger.credit_many`)."""

    transfer_id: UUID
    account_id: UUID
    points: int
    location_id: UUID | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Hold:
    """A pending transfer and how it was resolved, if it was."""

    id: UUID
    brand_id: UUID
    guest_id: UUID
    debit_account_id: UUID
    credit_account_id: UUID
    amount: int
    code: str
    order_id: UUID | None
    location_id: UUID | None
    created_at: datetime
    timeout_at: datetime | None
    # How it was resolved, and when: 'post_pending', 'void_pending', or None while open.
    resolution: str | None
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Resolved:
    """What :meth:`Ledger.resolve` met: it posted or voided the hold (``state`` is the account
    after), or the hold had been posted or voided already (``state`` is None)."""

    outcome: Literal["posted", "voided", "already_posted", "already_voided"]
    state: AccountState | None


def _already(resolution: str) -> Literal["already_posted", "already_voided"]:
    return "already_posted" if resolution == "post_pending" else "already_voided"


def _state(row: asyncpg.Record) -> AccountState:
    return AccountState(posted=row["posted"], pending=row["pending"], version=row["version"])


class Ledger:
    """Transfers between a guest's account and the brand's system accounts."""

    def __init__(self) -> None:
        self._system: dict[UUID, dict[str, UUID]] = {}

    async def system_account(
        self, conn: asyncpg.Connection, brand_id: UUID, kind: SystemAccount
    ) -> UUID:
        # System accounts never change once created, so they are cached per process.
        accounts = self._system.get(brand_id)
        if accounts is None:
            await conn.execute(sql.ENSURE_SYSTEM_ACCOUNTS, brand_id)
            rows = await conn.fetch(sql.SYSTEM_ACCOUNTS, brand_id)
            accounts = self._system[brand_id] = {row["kind"]: row["id"] for row in rows}
        return accounts[kind]

    async def open_account(self, conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID) -> UUID:
        account_id: UUID = await conn.fetchval(sql.OPEN_GUEST_ACCOUNT, brand_id, guest_id)
        return account_id

    async def snapshot(self, conn: asyncpg.Connection, guest_id: UUID) -> Snapshot | None:
        row = await conn.fetchrow(sql.WALLET_SNAPSHOT, guest_id)
        if row is None:
            return None
        return Snapshot(
            account_id=row["id"],
            state=_state(row),
            holds=list(zip(row["hold_ids"], row["hold_points"], strict=True)),
        )

    async def hold(
        self,
        conn: asyncpg.Connection,
        *,
        transfer_id: UUID,
        brand_id: UUID,
        account_id: UUID,
        points: int,
        code: str,
        timeout_at: datetime | None,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
    ) -> AccountState | None:
        """Reserve ``points`` (a pending transfer to ``redeemed``); None if not spendable."""
        redeemed = await self.system_account(conn, brand_id, "redeemed")
        row = await conn.fetchrow(
            sql.HOLD_POINTS, account_id, points, transfer_id, brand_id, redeemed, code,
            order_id, location_id, timeout_at,
        )  # fmt: skip
        return None if row is None else _state(row)

    async def pending(self, conn: asyncpg.Connection, transfer_id: UUID) -> Hold | None:
        row = await conn.fetchrow(sql.PENDING_TRANSFER, transfer_id)
        if row is None:
            return None
        return msgspec.convert(dict(row), Hold)

    async def resolve(self, conn: asyncpg.Connection, hold: Hold, *, post: bool) -> Resolved:
        """Post or void a pending transfer exactly once, and say what happened.

        A hold resolved before (by an earlier call, or by a concurrent one whose insert wins
        the unique index on ``pending_id``) is left as it is: the outcome says how it was
        resolved, and ``state`` is None.
        """
        if hold.resolution is not None:
            return Resolved(_already(hold.resolution), None)
        try:
            async with conn.transaction():
                await conn.execute(
                    sql.INSERT_TRANSFER,
                    uuid.uuid4(),
                    hold.brand_id,
                    hold.debit_account_id,
                    hold.credit_account_id,
                    hold.amount,
                    "post_pending" if post else "void_pending",
                    hold.id,
                    hold.code,
                    hold.order_id,
                    hold.location_id,
                    None,
                    None,
                    None,
                )
        except asyncpg.UniqueViolationError:
            winner = await conn.fetchval(sql.RESOLUTION_OF, hold.id)
            return Resolved(_already(winner), None)
        row = await conn.fetchrow(
            sql.SETTLE_HOLD, hold.debit_account_id, hold.amount, post, hold.id
        )
        assert row is not None
        return Resolved("posted" if post else "voided", _state(row))

    async def credit(
        self,
        conn: asyncpg.Connection,
        *,
        transfer_id: UUID,
        brand_id: UUID,
        account_id: UUID,
        points: int,
        code: str,
        source: SystemAccount,
        expires_at: datetime | None,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
        reason: str | None = None,
    ) -> AccountState:
        """Give a guest ``points`` from a system account (earn, accrual, welcome, restore)."""
        system = await self.system_account(conn, brand_id, source)
        row = await conn.fetchrow(
            sql.EARN, transfer_id, brand_id, system, account_id, points, code, order_id,
            location_id, expires_at, reason,
        )  # fmt: skip
        assert row is not None
        return _state(row)

    async def credit_many(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        source: SystemAccount,
        code: str,
        expires_at: datetime | None,
        credits: Sequence[Credit],
    ) -> dict[UUID, AccountState]:
        """:meth:`credit` for each of ``credits`` (points > 0): every transfer in one
        statement, every account credited its sum (one version per transfer) in another.
        Returns each account's state after all of its credits."""
        system = await self.system_account(conn, brand_id, source)
        await conn.execute(
            sql.INSERT_CREDITS,
            brand_id,
            system,
            code,
            expires_at,
            [c.transfer_id for c in credits],
            [c.account_id for c in credits],
            [c.points for c in credits],
            [c.location_id for c in credits],
            [c.reason for c in credits],
        )
        sums: dict[UUID, tuple[int, int]] = {}
        for c in credits:
            points, count = sums.get(c.account_id, (0, 0))
            sums[c.account_id] = (points + c.points, count + 1)
        ordered = sorted(sums)  # the order LOCK_GUEST_ACCOUNTS locks them in
        rows = await conn.fetch(
            sql.CREDIT_GUESTS,
            ordered,
            [sums[a][0] for a in ordered],
            [sums[a][1] for a in ordered],
        )
        return {row["id"]: _state(row) for row in rows}

    async def debit(
        self,
        conn: asyncpg.Connection,
        *,
        transfer_id: UUID,
        brand_id: UUID,
        account_id: UUID,
        points: int,
        code: str,
        sink: SystemAccount,
        guarded: bool,
        order_id: UUID | None = None,
        location_id: UUID | None = None,
        reason: str | None = None,
    ) -> AccountState | None:
        """Take ``points`` from a guest into a system account.

        ``guarded`` refuses (None) when the points are not spendable; unguarded debits (a
        refund clawback) may take the balance below zero, as DESIGN §3 allows.
        """
        row = await conn.fetchrow(
            sql.DEBIT_GUEST_GUARDED if guarded else sql.DEBIT_GUEST, account_id, points
        )
        if row is None:
            return None
        system = await self.system_account(conn, brand_id, sink)
        await conn.execute(
            sql.INSERT_TRANSFER,
            transfer_id,
            brand_id,
            account_id,
            system,
            points,
            "single",
            None,
            code,
            order_id,
            location_id,
            None,
            None,
            reason,
        )
        return _state(row)

    async def check(self, conn: asyncpg.Connection, brand_id: UUID) -> tuple[int, int, int]:
        """(brand sum, guest rows not matching their transfers, holds not matching)."""
        row = await conn.fetchrow(sql.LEDGER_CHECK, brand_id)
        assert row is not None
        return row["brand_sum"], row["mismatched_balances"], row["mismatched_holds"]

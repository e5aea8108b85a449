"""How POS moves points: a narrow port onto ``loyalty`` (DESIGN §6: loyalty is the only way
points move). Intake earns and reverses; the till tender holds, posts and voids.

:class:`PointsPort` is all that the POS use cases know; :class:`LoyaltyPoints` implements it
over today's loyalty service (its ledger, tiers and Redis mirror). When loyalty grows its own
spend and earn API, only this adapter changes.

Every write runs on the caller's connection inside the caller's transaction and returns the
:class:`Move` objects to mirror in Redis once that transaction has committed (:meth:`mirror`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID

import asyncpg

from server.infra.idempotency import Stored
from server.loyalty import sql as loyalty_sql
from server.loyalty.model import Program, earn_points
from server.loyalty.repository import AccountState
from server.loyalty.service import Loyalty, add_months, insufficient_points

__all__ = ["Earned", "Held", "LoyaltyPoints", "Move", "PointsPort", "Resolved", "WalletView"]


@dataclass(frozen=True, slots=True)
class Move:
    """A committed change to mirror in Redis."""

    guest_id: UUID
    op: Literal["post", "void", "credit"]
    transfer_id: UUID
    state: AccountState
    points: int = 0


@dataclass(frozen=True, slots=True)
class Earned:
    points: int
    transfer_id: UUID | None
    moves: tuple[Move, ...]


@dataclass(frozen=True, slots=True)
class WalletView:
    spendable: int
    tier: str


@dataclass(frozen=True, slots=True)
class Held:
    """A pending transfer held for the till, as PostgreSQL has it."""

    transfer_id: UUID
    guest_id: UUID
    brand_id: UUID
    location_id: UUID | None
    points: int
    code: str
    created_at: datetime
    timeout_at: datetime | None
    resolution: str | None
    resolved_at: datetime | None


@dataclass(frozen=True, slots=True)
class Resolved:
    resolution: Literal["post_pending", "void_pending"]
    moves: tuple[Move, ...]
    # The hold's timeout had passed: it was voided instead of posted.
    expired: bool = False


class PointsPort(Protocol):
    async def program(self, conn: asyncpg.Connection, brand_id: UUID) -> Program: ...

    async def wallet(
        self, conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID
    ) -> WalletView: ...

    async def earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        paid_minor: int,
        location_id: UUID,
        reason: str,
    ) -> Earned: ...

    async def reverse(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        points_reversed: int,
        points_restored: int,
        location_id: UUID,
        reason: str,
    ) -> tuple[Move, ...]: ...

    async def hold(
        self,
        *,
        brand_id: UUID,
        guest_id: UUID,
        points: int,
        location_id: UUID,
        transfer_id: UUID,
        timeout_s: int,
        request: tuple[str, str, bytes],
        answer: Callable[[asyncpg.Connection, int], Awaitable[Stored]],
    ) -> Stored: ...

    async def held(self, conn: asyncpg.Connection, transfer_id: UUID) -> Held | None: ...

    async def resolve(
        self, conn: asyncpg.Connection, transfer_id: UUID, *, post: bool
    ) -> Resolved | None: ...

    async def spendable(self, conn: asyncpg.Connection, guest_id: UUID) -> int: ...

    async def mirror(self, moves: Sequence[Move]) -> None: ...


HELD = """
SELECT t.id, t.brand_id, t.location_id, t.amount, t.code, t.created_at, t.timeout_at,
       a.guest_id, r.phase AS resolution, r.created_at AS resolved_at
FROM transfers t
JOIN accounts a ON a.id = t.debit_account_id
LEFT JOIN transfers r ON r.pending_id = t.id
WHERE t.id = $1 AND t.phase = 'pending'
"""
GUEST_ACCOUNT = "SELECT id FROM accounts WHERE guest_id = $1"


class LoyaltyPoints:
    """:class:`PointsPort` over the loyalty service of today."""

    def __init__(self, loyalty: Loyalty) -> None:
        self.loyalty = loyalty

    async def program(self, conn: asyncpg.Connection, brand_id: UUID) -> Program:
        return await self.loyalty.programs.get(brand_id, conn)

    async def _account(self, conn: asyncpg.Connection, guest_id: UUID) -> UUID:
        account_id: UUID | None = await conn.fetchval(GUEST_ACCOUNT, guest_id)
        assert account_id is not None, "every guest has an account"
        return account_id

    async def wallet(self, conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID) -> WalletView:
        program = await self.program(conn, brand_id)
        tier, _, _ = await self.loyalty.tier(conn, program, await self._account(conn, guest_id))
        return WalletView(spendable=await self.spendable(conn, guest_id), tier=tier.name)

    async def spendable(self, conn: asyncpg.Connection, guest_id: UUID) -> int:
        return int(await conn.fetchval(loyalty_sql.SPENDABLE, guest_id) or 0)

    async def earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        paid_minor: int,
        location_id: UUID,
        reason: str,
    ) -> Earned:
        """Credit what ``paid_minor`` of net money earns at the guest's tier (a lot that
        expires with the program's rule); nothing is written for 0 points."""
        program = await self.program(conn, brand_id)
        account_id = await self._account(conn, guest_id)
        tier, _, _ = await self.loyalty.tier(conn, program, account_id)
        points = earn_points(program, paid_minor, tier)
        if points <= 0:
            return Earned(0, None, ())
        transfer_id = uuid.uuid4()
        state = await self.loyalty.ledger.credit(
            conn,
            transfer_id=transfer_id,
            brand_id=brand_id,
            account_id=account_id,
            points=points,
            code="earn",
            source="issued",
            location_id=location_id,
            reason=reason,
            expires_at=add_months(datetime.now(UTC), program.lot_expiry_months),
        )
        return Earned(points, transfer_id, (Move(guest_id, "credit", transfer_id, state, points),))

    async def reverse(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        guest_id: UUID,
        points_reversed: int,
        points_restored: int,
        location_id: UUID,
        reason: str,
    ) -> tuple[Move, ...]:
        """Give back the points that paid for returned goods and take back what they earned
        (DESIGN §3: the clawback may take the balance below zero)."""
        ledger = self.loyalty.ledger
        account_id = await self._account(conn, guest_id)
        moves: list[Move] = []
        if points_restored > 0:
            program = await self.program(conn, brand_id)
            transfer_id = uuid.uuid4()
            state = await ledger.credit(
                conn,
                transfer_id=transfer_id,
                brand_id=brand_id,
                account_id=account_id,
                points=points_restored,
                code="refund_restore",
                source="redeemed",
                location_id=location_id,
                reason=reason,
                expires_at=add_months(datetime.now(UTC), program.lot_expiry_months),
            )
            moves.append(Move(guest_id, "credit", transfer_id, state, points_restored))
        if points_reversed > 0:
            transfer_id = uuid.uuid4()
            debited = await ledger.debit(
                conn,
                transfer_id=transfer_id,
                brand_id=brand_id,
                account_id=account_id,
                points=points_reversed,
                code="refund_reversal",
                sink="issued",
                guarded=False,
                reason=reason,
            )
            assert debited is not None
            moves.append(Move(guest_id, "credit", transfer_id, debited, -points_reversed))
        return tuple(moves)

    async def hold(
        self,
        *,
        brand_id: UUID,
        guest_id: UUID,
        points: int,
        location_id: UUID,
        transfer_id: UUID,
        timeout_s: int,
        request: tuple[str, str, bytes],
        answer: Callable[[asyncpg.Connection, int], Awaitable[Stored]],
    ) -> Stored:
        """Reserve ``points`` as the counter does: Redis admits (a fast refusal), PostgreSQL's
        guarded hold decides, Redis is settled after the commit. ``answer(conn, spendable
        after the hold)`` makes the response in the same transaction (the idempotency row). Refuses 422
        ``insufficient-points``; a replay of ``request`` answers the stored response."""
        from server.infra import idempotency

        loyalty = self.loyalty
        admission, replay = await loyalty.admit_or_replay(guest_id, transfer_id, points, request)
        if replay is not None:
            return replay
        scope, key, digest = request
        state: AccountState | None = None
        failure: BaseException | None = None
        try:
            async with loyalty.db.transaction() as conn:
                replay = await idempotency.begin(conn, scope, key, digest)
                if replay is not None:
                    return replay
                held = await loyalty.ledger.hold(
                    conn,
                    transfer_id=transfer_id,
                    brand_id=brand_id,
                    account_id=await self._account(conn, guest_id),
                    points=points,
                    code="pos_redemption",
                    location_id=location_id,
                    timeout_at=datetime.now(UTC) + timedelta(seconds=timeout_s),
                )
                if held is None:
                    raise insufficient_points(points, await self.spendable(conn, guest_id))
                stored = await answer(conn, held.spendable)
                await idempotency.finish(conn, scope, key, stored.status_code, stored.body)
            state = held
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await loyalty.settle_admission(guest_id, transfer_id, admission, state, failure)
        return stored

    async def held(self, conn: asyncpg.Connection, transfer_id: UUID) -> Held | None:
        row = await conn.fetchrow(HELD, transfer_id)
        if row is None:
            return None
        return Held(
            transfer_id=row["id"],
            guest_id=row["guest_id"],
            brand_id=row["brand_id"],
            location_id=row["location_id"],
            points=row["amount"],
            code=row["code"],
            created_at=row["created_at"],
            timeout_at=row["timeout_at"],
            resolution=row["resolution"],
            resolved_at=row["resolved_at"],
        )

    async def resolve(
        self, conn: asyncpg.Connection, transfer_id: UUID, *, post: bool
    ) -> Resolved | None:
        """Post or void a hold exactly once; a post past the hold's timeout voids it
        (``expired``). None when it was already resolved (by anyone)."""
        ledger = self.loyalty.ledger
        hold = await ledger.pending(conn, transfer_id)
        if hold is None or hold.resolution is not None:
            return None
        timeout_at = await conn.fetchval(
            "SELECT timeout_at FROM transfers WHERE id = $1", transfer_id
        )
        expired = post and timeout_at is not None and timeout_at < datetime.now(UTC)
        state = await ledger.resolve(conn, hold, post=post and not expired)
        if state is None:
            return None
        posted = post and not expired
        move = Move(hold.guest_id, "post" if posted else "void", transfer_id, state)
        return Resolved("post_pending" if posted else "void_pending", (move,), expired)

    async def mirror(self, moves: Sequence[Move]) -> None:
        for move in moves:
            await self.loyalty.mirror(
                move.guest_id, move.op, move.transfer_id, move.state, move.points
            )

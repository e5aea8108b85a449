"""How POS moves points: a narrow port onto ``loyalty`` (DESIGN §6: loyalty is the only way
points move). Intake earns and reverses; the till tender holds, posts and voids.

:class:`PointsPort` is all that the POS use cases know; :class:`LoyaltyPoints` implements it
over loyalty's spend and earn API (server/loyalty/service.py).

Every write runs on the caller's connection inside the caller's transaction and returns the
:class:`Move` objects to mirror in Redis once that transaction has committed (:meth:`mirror`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID

import asyncpg

from server.infra import idempotency
from server.infra.idempotency import IdempotentRequest, Stored
from server.loyalty.model import AccountState, Earning, Movement, PlannedEarn, Program, earn_points
from server.loyalty.service import Loyalty

__all__ = [
    "Earned",
    "Earning",
    "Held",
    "LoyaltyPoints",
    "Move",
    "PlannedEarn",
    "PointsPort",
    "Resolved",
    "WalletView",
]


# A committed change to mirror in Redis: loyalty's own.
Move = Movement


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

    async def earn_many(
        self, conn: asyncpg.Connection, *, brand_id: UUID, earnings: Sequence[Earning]
    ) -> list[Earned]: ...

    async def plan_earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        program: Program,
        earned_in_window: int,
        paid_minor: int,
    ) -> PlannedEarn | None: ...

    def planned(self, guest_id: UUID, plan: PlannedEarn | None, state: AccountState) -> Earned: ...

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
        request: IdempotentRequest,
        answer: Callable[[asyncpg.Connection, int], Awaitable[Stored]],
    ) -> Stored: ...

    async def held(self, conn: asyncpg.Connection, transfer_id: UUID) -> Held | None: ...

    async def resolve(
        self, conn: asyncpg.Connection, transfer_id: UUID, *, post: bool
    ) -> Resolved | None: ...

    async def spendable(self, conn: asyncpg.Connection, guest_id: UUID) -> int: ...

    async def mirror(self, moves: Sequence[Move]) -> None: ...


class LoyaltyPoints:
    """:class:`PointsPort` over loyalty's spend and earn API."""

    def __init__(self, loyalty: Loyalty) -> None:
        self.loyalty = loyalty

    async def program(self, conn: asyncpg.Connection, brand_id: UUID) -> Program:
        return await self.loyalty.programs.get(brand_id, conn)

    async def _account(self, conn: asyncpg.Connection, guest_id: UUID) -> UUID:
        account_id = await self.loyalty.account_of(conn, guest_id)
        assert account_id is not None, "every guest has an account"
        return account_id

    async def wallet(self, conn: asyncpg.Connection, brand_id: UUID, guest_id: UUID) -> WalletView:
        program = await self.program(conn, brand_id)
        tier, _, _ = await self.loyalty.tier(conn, program, await self._account(conn, guest_id))
        return WalletView(spendable=await self.spendable(conn, guest_id), tier=tier.name)

    async def spendable(self, conn: asyncpg.Connection, guest_id: UUID) -> int:
        return await self.loyalty.spendable(conn, guest_id) or 0

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
        moved = await self.loyalty.earn(
            conn, brand_id=brand_id, guest_id=guest_id, account_id=account_id, points=points,
            code="earn", location_id=location_id, reason=reason,
        )  # fmt: skip
        return Earned(points, moved.transfer_id, (moved,))

    async def earn_many(
        self, conn: asyncpg.Connection, *, brand_id: UUID, earnings: Sequence[Earning]
    ) -> list[Earned]:
        """:meth:`earn` for each of ``earnings``, one after another in order (a guest's tier
        counts what their earlier ones earned), in a few statements for all of them."""
        moved = await self.loyalty.earn_many(conn, brand_id=brand_id, earnings=earnings)
        return [
            Earned(0, None, ()) if m is None else Earned(m.points, m.transfer_id, (m,))
            for m in moved
        ]

    async def plan_earn(
        self,
        conn: asyncpg.Connection,
        *,
        brand_id: UUID,
        program: Program,
        earned_in_window: int,
        paid_minor: int,
    ) -> PlannedEarn | None:
        """What :meth:`earn` would credit, for a statement of the caller's to write through
        loyalty's ``loyalty_earn`` (None: 0 points, nothing to write)."""
        return await self.loyalty.plan_earn(
            conn, brand_id=brand_id, program=program, earned_in_window=earned_in_window,
            paid_minor=paid_minor,
        )  # fmt: skip

    def planned(self, guest_id: UUID, plan: PlannedEarn | None, state: AccountState) -> Earned:
        """What :meth:`earn` would have answered, once ``plan`` is written (``state``: the
        account after it)."""
        if plan is None:
            return Earned(0, None, ())
        return Earned(
            plan.points, plan.transfer_id, (self.loyalty.planned_movement(guest_id, plan, state),)
        )

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
        account_id = await self._account(conn, guest_id)
        moves: list[Move] = []
        if points_restored > 0:
            restored = await self.loyalty.earn(
                conn,
                brand_id=brand_id,
                guest_id=guest_id,
                account_id=account_id,
                points=points_restored,
                code="refund_restore",
                location_id=location_id,
                reason=reason,
            )
            moves.append(restored)
        if points_reversed > 0:
            reversed_ = await self.loyalty.reverse_earning(
                conn,
                brand_id=brand_id,
                guest_id=guest_id,
                account_id=account_id,
                points=points_reversed,
                location_id=location_id,
                reason=reason,
            )
            moves.append(reversed_)
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
        request: IdempotentRequest,
        answer: Callable[[asyncpg.Connection, int], Awaitable[Stored]],
    ) -> Stored:
        """Reserve ``points`` through loyalty's spend: Redis admits (a fast refusal),
        PostgreSQL's guarded hold decides, Redis is settled after the commit. ``answer(conn,
        spendable after the hold)`` makes the response in the same transaction (the
        idempotency row). Refuses 422 ``insufficient-points``; a replay of ``request`` answers
        the stored response."""
        async with self.loyalty.spend(guest_id, transfer_id, points, request) as spend:
            if spend.replay is not None:
                return spend.replay
            async with self.loyalty.db.transaction() as conn:
                replay = await idempotency.begin_request(conn, request)
                if replay is not None:
                    return replay
                held = await spend.hold(
                    conn,
                    brand_id=brand_id,
                    account_id=await self._account(conn, guest_id),
                    code="pos_redemption",
                    location_id=location_id,
                    timeout_at=datetime.now(UTC) + timedelta(seconds=timeout_s),
                )
                stored = await answer(conn, held.spendable)
                await idempotency.finish_request(conn, request, stored)
            spend.committed(held)
        return stored

    async def held(self, conn: asyncpg.Connection, transfer_id: UUID) -> Held | None:
        hold = await self.loyalty.hold_of(conn, transfer_id)
        if hold is None:
            return None
        return Held(
            transfer_id=hold.id,
            guest_id=hold.guest_id,
            brand_id=hold.brand_id,
            location_id=hold.location_id,
            points=hold.amount,
            code=hold.code,
            created_at=hold.created_at,
            timeout_at=hold.timeout_at,
            resolution=hold.resolution,
            resolved_at=hold.resolved_at,
        )

    async def resolve(
        self, conn: asyncpg.Connection, transfer_id: UUID, *, post: bool
    ) -> Resolved | None:
        """Post or void a hold exactly once; a post past the hold's timeout voids it
        (``expired``). None when it was already resolved (by anyone)."""
        hold = await self.loyalty.hold_of(conn, transfer_id)
        if hold is None:
            return None
        resolution = await self.loyalty.resolve(conn, hold, post=post, now=datetime.now(UTC))
        if resolution.movement is None:
            return None
        posted = resolution.outcome == "posted"
        expired = resolution.outcome == "expired"
        return Resolved(
            "post_pending" if posted else "void_pending", (resolution.movement,), expired
        )

    async def mirror(self, moves: Sequence[Move]) -> None:
        await self.loyalty.mirror_all(moves)

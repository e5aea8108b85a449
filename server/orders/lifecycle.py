"""An order after the checkout: reading it, paying it, moving it through its statuses,
cancelling it, and expiring the unpaid ones. Points move only through loyalty."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec

from server.infra import idempotency
from server.infra.audit import audit
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.loyalty.model import Movement
from server.loyalty.service import Loyalty
from server.orders import sql
from server.orders.model import (
    CANCELLABLE_BY_GUEST,
    CANCELLABLE_BY_STAFF,
    STAFF_TRANSITIONS,
    split_earning,
)
from server.orders.views import announce, order_from_rows, visible
from shared import contract

__all__ = ["PAYMENTS_ROUTE", "Lifecycle"]

_encode = msgspec.json.Encoder().encode
PAYMENTS_ROUTE = "POST /v1/orders/{order_id}/payments"


class Lifecycle:
    def __init__(
        self,
        db: Database,
        loyalty: Loyalty,
        on_completed: Callable[[asyncpg.Connection, UUID], Awaitable[None]],
    ) -> None:
        """``on_completed`` runs in the transaction that completes an order (the guest profile
        update, wired by the composition root so orders need not import the counter)."""
        self.db = db
        self.loyalty = loyalty
        self.on_completed = on_completed

    async def get(self, principal: Principal, order_id: UUID) -> contract.Order:
        async with self.db.connection() as conn:
            order = await visible(conn, principal, order_id, lock=False)
            return order_from_rows(order, await conn.fetch(sql.LINES, order_id))

    async def list_for_guest(
        self, guest_id: UUID, before: datetime | None, limit: int
    ) -> list[contract.Order]:
        """The guest's orders created before ``before`` (a time with its offset), newest first."""
        if before is not None:
            if before.tzinfo is None:
                raise Problem(422, "invalid-before", "before needs a timezone offset")
            try:
                before = before.astimezone(UTC)
            except OverflowError:
                raise Problem(422, "invalid-before", "before is out of range") from None
        async with self.db.connection() as conn:
            orders = await conn.fetch(sql.GUEST_ORDERS, guest_id, before, limit)
            lines = await conn.fetch(sql.LINES_OF_ORDERS, [o["id"] for o in orders])
        by_order: dict[UUID, list[asyncpg.Record]] = {}
        for line in lines:
            by_order.setdefault(line["order_id"], []).append(line)
        return [order_from_rows(o, by_order.get(o["id"], [])) for o in orders]

    async def pay(
        self, guest: Principal, order_id: UUID, body: contract.PaymentIn, key: str
    ) -> Stored:
        """Take the money part with the provider; success places the order and posts points.

        The built-in ``test`` provider accepts token "ok" and declines anything else; a
        decline leaves the order payable (and is itself replayed for the same key).
        """
        request = IdempotentRequest.of(
            f"guest:{guest.subject_id}:payments",
            key,
            PAYMENTS_ROUTE.format(order_id=order_id),
            body,
        )
        moved: Movement | None = None
        async with self.db.transaction() as conn:
            replay = await idempotency.begin_request(conn, request)
            if replay is not None:
                return replay
            order = await visible(conn, guest, order_id, lock=True)
            if order["status"] != "awaiting_payment":
                raise Problem(
                    409,
                    "order-not-payable",
                    f"the order is {order['status']}, not awaiting payment",
                )
            approved = body.token == "ok"
            await conn.execute(
                sql.INSERT_PAYMENT,
                order_id,
                body.provider,
                "succeeded" if approved else "declined",
                order["amount_due_minor"],
            )
            if not approved:
                problem = Problem(
                    402, "payment-declined", "the payment was declined; the order is still payable"
                )
                stored = Stored(402, _encode(problem.body(f"/v1/orders/{order_id}/payments")))
                await idempotency.finish_request(conn, request, stored)
            else:
                moved = await self._post_spend(conn, order)
                await conn.execute(sql.SET_STATUS, order_id, "placed", 0)
                placed = order_from_rows(
                    {
                        **dict(order),
                        "status": "placed",
                        "payment_expires_at": order["payment_expires_at"],
                    },
                    await conn.fetch(sql.LINES, order_id),
                )
                await announce(conn, "order.placed", placed)
                stored = Stored(200, _encode(placed))
                await idempotency.finish_request(conn, request, stored)
        await self.loyalty.mirror_all([moved])
        return stored

    async def _post_spend(self, conn: asyncpg.Connection, order: asyncpg.Record) -> Movement | None:
        if order["spend_transfer_id"] is None:
            return None
        hold = await self.loyalty.hold_of(conn, order["spend_transfer_id"])
        posted = None if hold is None else await self.loyalty.resolve(conn, hold, post=True)
        if posted is None or posted.outcome != "posted":
            # The worker voided the hold when the window passed (before this read, or after it
            # and before this post): the order must not be placed with points it no longer
            # holds (the payment row rolls back with this refusal).
            raise Problem(
                409, "order-expired", "the payment window has passed; place the order again"
            )
        return posted.movement

    async def change_status(self, staff: Principal, order_id: UUID, target: str) -> contract.Order:
        """Move an order one step forward; completion earns the points (DESIGN §5)."""
        if target == "cancelled":
            return await self.cancel(staff, order_id)
        earned: Movement | None = None
        async with self.db.transaction() as conn:
            order = await visible(conn, staff, order_id, lock=True)
            if STAFF_TRANSITIONS.get(order["status"]) != target:
                raise Problem(
                    409,
                    "invalid-transition",
                    f"an order that is {order['status']} cannot become {target}",
                )
            if target == "completed":
                earned = await self._earn(conn, order)
            points = earned.points if earned else 0
            await conn.execute(sql.SET_STATUS, order_id, target, points)
            if target == "completed":
                # The kiosk's guest card reads precomputed habits: fold this visit in now.
                await self.on_completed(conn, order_id)
            lines = await conn.fetch(sql.LINES, order_id)
            updated = order_from_rows(
                {**dict(order), "status": target, "points_earned": points}, lines
            )
            await announce(conn, "order.status", updated)
            await audit(
                conn,
                staff,
                "order.status",
                order["guest_id"],
                {"order_id": str(order_id), "status": target},
            )
        await self.loyalty.mirror_all([earned])
        return updated

    async def _earn(self, conn: asyncpg.Connection, order: asyncpg.Record) -> Movement | None:
        program = await self.loyalty.programs.get(order["brand_id"], conn)
        account_id = await self.loyalty.account_of(conn, order["guest_id"])
        assert account_id is not None  # enrolment opens it with the guest
        tier, _, _ = await self.loyalty.tier(conn, program, account_id)
        lines = await conn.fetch(sql.LINES_TO_EARN, order["id"])
        shares = split_earning(
            program, tier, [(ln["paid_minor"], ln["earns_points"]) for ln in lines]
        )
        await conn.executemany(
            sql.SET_LINE_POINTS_EARNED,
            [(ln["id"], share) for ln, share in zip(lines, shares, strict=True)],
        )
        if sum(shares) == 0:
            return None
        return await self.loyalty.earn(
            conn,
            brand_id=order["brand_id"],
            guest_id=order["guest_id"],
            account_id=account_id,
            points=sum(shares),
            code="earn",
            order_id=order["id"],
            location_id=order["location_id"],
        )

    async def cancel(self, principal: Principal, order_id: UUID) -> contract.Order:
        """Cancel before preparation: the hold is voided, or posted points are given back; a
        paid order's money is refunded (a refund row per line), and a promo use is released."""
        async with self.db.transaction() as conn:
            order = await visible(conn, principal, order_id, lock=True)
            allowed = CANCELLABLE_BY_GUEST if principal.kind == "guest" else CANCELLABLE_BY_STAFF
            if principal.kind == "staff" and not principal.at_least("shift_lead"):
                raise Problem(403, "insufficient-role", "cancelling needs a shift lead or above")
            if order["status"] not in allowed:
                raise Problem(
                    409,
                    "not-cancellable",
                    f"an order that is {order['status']} can no longer be cancelled",
                )
            mirror = await self._release_points(conn, order)
            if order["status"] != "awaiting_payment":  # paid (or nothing was due): pay it back
                await conn.execute(sql.REFUND_PAID_LINES, order_id)
            await conn.execute(sql.RELEASE_PROMO, order_id)
            await conn.execute(sql.SET_STATUS, order_id, "cancelled", 0)
            await conn.execute(sql.RELEASE_SLOT, order["location_id"], order["slot_start"])
            updated = order_from_rows(
                {**dict(order), "status": "cancelled"}, await conn.fetch(sql.LINES, order_id)
            )
            await announce(conn, "order.status", updated)
            if principal.kind == "staff":
                await audit(
                    conn, principal, "order.cancel", order["guest_id"], {"order_id": str(order_id)}
                )
        await self.loyalty.mirror_all([mirror])
        return updated

    async def _release_points(
        self, conn: asyncpg.Connection, order: asyncpg.Record
    ) -> Movement | None:
        """Void the order's hold, or give back the points it posted (a lot that expires as a
        new one); None when the order spent no points."""
        if order["spend_transfer_id"] is None:
            return None
        hold = await self.loyalty.hold_of(conn, order["spend_transfer_id"])
        assert hold is not None
        if hold.resolution is None:
            return (await self.loyalty.resolve(conn, hold, post=False)).movement
        if hold.resolution == "post_pending":
            return await self.loyalty.earn(
                conn,
                brand_id=order["brand_id"],
                guest_id=order["guest_id"],
                account_id=hold.debit_account_id,
                points=hold.amount,
                code="spend_returned",
                order_id=order["id"],
            )
        return None

    async def expire_unpaid(self, batch_size: int) -> int:
        """Cancel orders whose payment window passed and void their holds; returns how many."""
        rows = await self.db.fetch(sql.EXPIRED_UNPAID, batch_size)
        expired = 0
        for row in rows:
            mirror = None
            async with self.db.transaction() as conn:
                order = await conn.fetchrow(sql.ORDER_FOR_UPDATE, row["id"])
                if order is None or order["status"] != "awaiting_payment":
                    continue
                mirror = await self._release_points(conn, order)
                await conn.execute(sql.RELEASE_PROMO, order["id"])
                await conn.execute(sql.SET_STATUS, order["id"], "cancelled", 0)
                await conn.execute(sql.RELEASE_SLOT, order["location_id"], order["slot_start"])
                expired += 1
            await self.loyalty.mirror_all([mirror])
        return expired

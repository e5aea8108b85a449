"""Line refunds of a completed order: the points each line earned are reversed and the points
that paid for it restored, through loyalty, and the guest's profile counts the line out
(``on_refunded``), exactly once per line."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
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
from server.orders.views import order_from_rows, visible
from shared import contract

__all__ = ["REFUNDS_ROUTE", "RefundedHook", "Refunds"]

_encode = msgspec.json.Encoder().encode
REFUNDS_ROUTE = "POST /v1/orders/{order_id}/refunds"

# Runs in the refund's transaction with the lines refunded by it (the guest's profile counts
# them out; wired in lifespan).
RefundedHook = Callable[[asyncpg.Connection, UUID, Sequence[UUID]], Awaitable[None]]


class Refunds:
    def __init__(self, db: Database, loyalty: Loyalty, on_refunded: RefundedHook) -> None:
        self.db = db
        self.loyalty = loyalty
        self.on_refunded = on_refunded

    async def refund_lines(
        self, staff: Principal, order_id: UUID, body: contract.RefundIn, key: str
    ) -> Stored:
        """Refund lines of a completed order: each line's earned points are reversed and the
        points that paid for it restored, exactly once per line whatever the retries."""
        if not staff.at_least("shift_lead"):
            raise Problem(403, "insufficient-role", "refunds need a shift lead or above")
        request = IdempotentRequest.of(
            f"staff:{staff.subject_id}:refunds", key, REFUNDS_ROUTE.format(order_id=order_id), body
        )
        async with self.db.transaction() as conn:
            replay = await idempotency.begin_request(conn, request)
            if replay is not None:
                return replay
            order = await visible(conn, staff, order_id, lock=True)
            if order["status"] not in ("completed", "refunded"):
                raise Problem(
                    409,
                    "not-refundable",
                    f"only completed orders are refunded; this one is {order['status']}",
                )
            rows = await conn.fetch(sql.LINES_FOR_REFUND, order_id, body.line_ids)
            if len(rows) != len(set(body.line_ids)):
                raise Problem(404, "line-not-found", "one of line_ids is not a line of this order")
            mirrors, refunded = await self._refund_rows(conn, order, rows)
            if refunded:
                await self.on_refunded(conn, order_id, refunded)
            if await conn.fetchval(sql.ALL_LINES_REFUNDED, order_id):
                await conn.execute(sql.SET_STATUS, order_id, "refunded", order["points_earned"])
            after = await conn.fetchrow(sql.ORDER, order_id)
            assert after is not None  # locked above
            updated = order_from_rows(after, await conn.fetch(sql.LINES, order_id))
            await audit(
                conn,
                staff,
                "order.refund",
                order["guest_id"],
                {"order_id": str(order_id), "line_ids": [str(x) for x in body.line_ids]},
            )
            stored = Stored(200, _encode(updated))
            await idempotency.finish_request(conn, request, stored)
        await self.loyalty.mirror_all(mirrors)
        return stored

    async def _refund_rows(
        self, conn: asyncpg.Connection, order: asyncpg.Record, rows: list[asyncpg.Record]
    ) -> tuple[list[Movement], list[UUID]]:
        """The points moved for the lines not refunded before, and those lines."""
        account_id = await self.loyalty.account_of(conn, order["guest_id"])
        assert account_id is not None  # enrolment opens it with the guest
        moved: list[Movement] = []
        refunded: list[UUID] = []
        for row in rows:
            if row["refunded"]:
                continue
            refund = (row["id"], row["paid_minor"], row["points_spent"], row["points_earned"])
            if await conn.fetchval(sql.INSERT_REFUND, *refund) is None:
                continue  # a concurrent refund of this line won
            await conn.execute(sql.MARK_LINE_REFUNDED, row["id"])
            refunded.append(row["id"])
            if row["points_spent"]:
                moved.append(
                    await self.loyalty.earn(
                        conn,
                        brand_id=order["brand_id"],
                        guest_id=order["guest_id"],
                        account_id=account_id,
                        order_id=order["id"],
                        points=row["points_spent"],
                        code="refund_restore",
                    )
                )
            if row["points_earned"]:
                moved.append(
                    await self.loyalty.reverse_earning(
                        conn,
                        brand_id=order["brand_id"],
                        guest_id=order["guest_id"],
                        account_id=account_id,
                        order_id=order["id"],
                        points=row["points_earned"],
                    )
                )
        return moved, refunded

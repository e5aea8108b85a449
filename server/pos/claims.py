"""Claiming an anonymous till receipt: a signed-in guest types the code the till printed and
earns what the receipt would have earned had they shown their QR (once, within the window)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from server.guests import identities
from server.infra.db import Database
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.loyalty.model import allocate
from server.pos import sql
from server.pos.model import normalise_claim_code, refund_share
from server.pos.points import Move, PointsPort
from server.pos.pricing import TillPricing
from server.pos.receipts import ItemSold, ReceiptVisit, VisitHook, item_sold
from shared.pos import ClaimIn, ClaimResult

__all__ = ["Claims"]


class Claims:
    def __init__(
        self, db: Database, points: PointsPort, pricing: TillPricing, on_visit: VisitHook
    ) -> None:
        self.db = db
        self.points = points
        self.pricing = pricing
        self.on_visit = on_visit

    async def _take_back_returned(
        self,
        conn: asyncpg.Connection,
        guest: Principal,
        receipt: asyncpg.Record,
        key: tuple[Any, ...],
        lines: list[asyncpg.Record],
        points: int,
        moves: list[Move],
    ) -> int:
        """Spread ``points`` over the receipt's lines and reverse the share of lines returned
        before the claim (appending its moves to ``moves``); returns the points reversed."""
        weights = [r["paid_minor"] if r["earns"] else 0 for r in lines]
        shares = allocate(points, weights)
        await conn.execute(sql.SET_LINE_POINTS, *key, [r["line_no"] for r in lines], shares)
        returned = sum(
            refund_share(s, r["quantity"], Decimal(0), r["refunded_quantity"])
            for s, r in zip(shares, lines, strict=True)
        )
        if returned:
            moves += await self.points.reverse(
                conn,
                brand_id=guest.brand_id,
                guest_id=guest.subject_id,
                points_reversed=returned,
                points_restored=0,
                location_id=receipt["location_id"],
                reason=f"lines of receipt {receipt['external_id']} returned before its claim",
            )
        return returned

    async def claim(self, guest: Principal, body: ClaimIn) -> ClaimResult:
        """Attribute the receipt of ``body.code`` to ``guest`` and earn its points.

        Refuses 404 ``claim-not-found`` (no such code at the guest's brand), 409
        ``claim-already-used`` (claimed before, by anyone), 422 ``claim-expired``. Lines
        returned before the claim earn nothing: their share is taken back at once.
        """
        code = normalise_claim_code(body.code)
        moves: list[Move] = []
        async with self.db.transaction() as conn:
            taken = await conn.fetchrow(sql.TAKE_CLAIM, code, guest.brand_id, guest.subject_id)
            if taken is None:
                await self._refuse(conn, code, guest)
            assert taken is not None
            key = (taken["brand_id"], taken["occurred_at"], taken["receipt_id"])
            receipt = await conn.fetchrow(sql.CLAIMED_RECEIPT, *key, guest.subject_id)
            if receipt is None:
                raise Problem(409, "claim-already-used", "this receipt already has a guest")
            lines = await conn.fetch(sql.CLAIMED_LINES, *key)
            weights = [r["paid_minor"] if r["earns"] else 0 for r in lines]
            earned = await self.points.earn(
                conn,
                brand_id=guest.brand_id,
                guest_id=guest.subject_id,
                paid_minor=sum(weights),
                location_id=receipt["location_id"],
                reason=f"claimed receipt {receipt['external_id']}",
            )
            moves += earned.moves
            returned = await self._take_back_returned(
                conn, guest, receipt, key, lines, earned.points, moves
            )
            points = earned.points - returned
            await conn.execute(sql.SET_RECEIPT_POINTS, *key, earned.points)
            if receipt["pos_customer_id"]:
                await identities.link_pos_customer(
                    conn,
                    guest.brand_id,
                    guest.subject_id,
                    receipt["integration_id"],
                    receipt["pos_customer_id"],
                )
            # What is kept of what was paid: lines returned before the claim count out, as a
            # refund after it would count them out of the profile.
            paid = sum(
                r["paid_minor"]
                - refund_share(r["paid_minor"], r["quantity"], Decimal(0), r["refunded_quantity"])
                for r in lines
            )
            visit = ReceiptVisit(
                guest.subject_id,
                receipt["location_id"],
                taken["occurred_at"],
                paid,
                points,
                await self._items_kept(conn, guest.brand_id, lines),
            )
            await self.on_visit(conn, visit)
        await self.points.mirror(moves)
        return ClaimResult(receipt_id=taken["receipt_id"], points_earned=points)

    async def _items_kept(
        self, conn: asyncpg.Connection, brand_id: UUID, lines: list[asyncpg.Record]
    ) -> tuple[ItemSold, ...]:
        """The claimed receipt's lines the menu knows, less what was returned before the
        claim, as the guest's top items count them (as a sale naming the guest would)."""
        menu = await self.pricing.menu_of(conn, brand_id, {r["sku"] for r in lines if r["sku"]})
        kept = (
            item_sold(menu, r["sku"], r["name"], left, r["unit_price_minor"])
            for r in lines
            if (left := r["quantity"] - r["refunded_quantity"]) > 0
        )
        return tuple(item for item in kept if item is not None)

    @staticmethod
    async def _refuse(conn: asyncpg.Connection, code: str, guest: Principal) -> None:
        row = await conn.fetchrow(sql.CLAIM, code, guest.brand_id)
        if row is None:
            raise Problem(404, "claim-not-found", "no receipt has this code")
        if row["claimed_by"] is not None:
            raise Problem(409, "claim-already-used", "this receipt was already claimed")
        if row["expires_at"] <= datetime.now(UTC):
            raise Problem(422, "claim-expired", "this receipt can no longer be claimed")
        raise Problem(409, "claim-already-used", "this receipt was just claimed")

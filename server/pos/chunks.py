"""A batch's chunk of receipts taken set-based (issue 23): what the receipt's transaction
(:meth:`server.pos.receipts.Intake.take_on`) would store and answer for each, in a few
statements for the whole chunk: the replays read at once, one key claim, one catalogue read,
the guests looked up together, their points earned and visits folded per chunk in file order,
one claim-code insert and one write of every sale and line. What it does not take (a refund,
a receipt refused or in conflict) it answers None for, and the batch takes that one with
take_on (server/pos/batch.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from server.infra.problems import Problem
from server.pos import sql
from server.pos.auth import Till
from server.pos.identify import Resolved, TillGuests
from server.pos.model import Pricing, new_claim_code, price_receipt, with_points_earned
from server.pos.points import Earning, Move, PointsPort
from server.pos.pricing import TillPricing
from server.pos.receipts import (
    CLAIM_ATTEMPTS,
    ReceiptVisit,
    Taken,
    VisitsHook,
    earn_reason,
    line_rows,
    pos_customer_of,
    request_digest,
    visit_of,
)
from server.settings import Settings
from shared.pos import ReceiptIn, ReceiptOut

__all__ = ["ChunkIntake"]

_encode = msgspec.json.Encoder().encode


class ChunkIntake:
    def __init__(
        self,
        settings: Settings,
        pricing: TillPricing,
        guests: TillGuests,
        points: PointsPort,
        on_visits: VisitsHook,
    ) -> None:
        self.settings = settings
        self.pricing = pricing
        self.guests = guests
        self.points = points
        self.on_visits = on_visits

    async def take_many(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        after: asyncio.Event | None = None,
    ) -> list[Taken | None]:
        """What :meth:`Intake.take_on` would answer for a chunk of receipts, set-based where
        that is the same: replays of receipts stored before, and sales (one key claim, one
        catalogue read, one claim-code insert and one write for the whole chunk; the named
        guests looked up, their points earned and their visits folded per chunk, in file
        order: see :meth:`_earn_and_visit`). None for a receipt the caller takes with
        :meth:`Intake.take_on` (a refund, one that is refused or conflicts, one whose key
        another transaction holds, an ``external_id`` twice in the chunk). Raises asyncpg's
        errors for data the database refuses, and a Problem; the caller then takes the chunk
        one receipt at a time (in a savepoint, so nothing of this stays).

        With ``after`` (server/pos/batch.py sets it once the chunk before this one committed,
        and passes it only when the two share no ``external_id``), the chunk's keys are claimed
        and its anonymous sales written first; points, visits and the sales naming a guest wait
        for ``after``, so that they follow the chunk before, as one receipt after another would.
        Before ``after`` it locks or writes no row the chunk before writes (but for a claim
        code drawn by both, one in 10^14).
        """
        answers: list[Taken | None] = [None] * len(receipts)
        digests = _chunk_digests(till, receipts)
        if not digests:
            return answers
        fresh = await self._replays(conn, till, receipts, digests, answers)
        priced = await self._priced_sales(conn, till, receipts, fresh)
        if priced is None:
            return answers
        currency, menu, sales = priced
        ids = {i: uuid.uuid4() for i, _ in sales}
        sales = await self._claim_keys(conn, till, receipts, sales, digests, ids)
        if not sales:
            return answers
        sale = _ChunkSales(currency, menu, ids)
        taken: dict[int, tuple[bytes, tuple[Move, ...]]] = {}
        resolved: dict[int, Resolved] | None = None
        later = sales
        if all(_found_by_reads(receipts[i]) for i, _ in sales):
            resolved = await self._guests_of(conn, till, receipts, sales)
            anonymous = [(i, p) for i, p in sales if resolved[i].guest_id is None]
            later = [(i, p) for i, p in sales if resolved[i].guest_id is not None]
            taken |= await self._take_sales(conn, till, receipts, anonymous, resolved, sale)
        if after is not None:
            await after.wait()
        if later:
            if resolved is None:
                resolved = await self._guests_of(conn, till, receipts, later)
            taken |= await self._take_sales(conn, till, receipts, later, resolved, sale)
        for i, (body, moves) in taken.items():
            answers[i] = Taken("created", ids[i], body, moves)
        return answers

    async def _claim_keys(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
        digests: dict[int, bytes],
        ids: dict[int, UUID],
    ) -> list[tuple[int, Pricing]]:
        """Claim the sales' keys in one statement; the sales whose key this chunk now holds
        (another transaction's, or one stored meanwhile, is left to take_on)."""
        claimed = {
            row["external_id"]
            for row in await conn.fetch(
                sql.CLAIM_RECEIPT_KEYS,
                till.integration_id,
                till.brand_id,
                [receipts[i].external_id for i, _ in sales],
                [digests[i] for i, _ in sales],
                [receipts[i].occurred_at for i, _ in sales],
                [ids[i] for i, _ in sales],
            )
        }
        return [(i, p) for i, p in sales if receipts[i].external_id in claimed]

    async def _guests_of(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
    ) -> dict[int, Resolved]:
        guests = await self.guests.resolve_many(conn, till, [receipts[i] for i, _ in sales])
        return dict(zip((i for i, _ in sales), guests, strict=True))

    async def _take_sales(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
        guests: dict[int, Resolved],
        chunk: _ChunkSales,
    ) -> dict[int, tuple[bytes, tuple[Move, ...]]]:
        """Earn, fold the visits of and write ``sales`` (keys claimed); each one's stored
        answer and points moved."""
        if not sales:
            return {}
        outs, moves, sales = await self._earn_and_visit(
            conn, till, receipts, sales, guests, chunk.ids, chunk.menu
        )
        bodies = await self._write_sales(
            conn, till, chunk.currency, receipts, sales, chunk.ids, outs
        )
        return {i: (bodies[i], moves[i]) for i, _ in sales}

    async def _replays(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        digests: dict[int, bytes],
        answers: list[Taken | None],
    ) -> list[int]:
        """Answer the chunk's replays of receipts stored before (into ``answers``); returns
        the receipts whose key is not stored yet."""
        stored = {
            row["external_id"]: row
            for row in await conn.fetch(
                sql.RECEIPT_KEYS, till.integration_id, [receipts[i].external_id for i in digests]
            )
        }
        fresh = [i for i in digests if receipts[i].external_id not in stored]
        for i in digests:
            row = stored.get(receipts[i].external_id)
            if row is not None and bytes(row["request_hash"]) == digests[i]:
                answers[i] = Taken("replayed", row["receipt_id"], bytes(row["response"]))
        return fresh

    async def _priced_sales(
        self, conn: asyncpg.Connection, till: Till, receipts: Sequence[ReceiptIn], fresh: list[int]
    ) -> tuple[str, dict[str, UUID], list[tuple[int, Pricing]]] | None:
        """The fresh sales of the chunk priced (currency, menu items, sales), or None when
        there are none; a sale that take_on would refuse is left to it."""
        candidates = [i for i in fresh if receipts[i].refund_of is None]
        if not candidates:
            return None
        currency = await self.pricing.currency_of(conn, till)
        candidates = [i for i in candidates if receipts[i].currency in (None, currency)]
        excluded, menu = await self.pricing.catalogue_of(
            conn, till, [receipts[i] for i in candidates]
        )
        program = await self.points.program(conn, till.brand_id)
        sales: list[tuple[int, Pricing]] = []
        for n, i in enumerate(candidates, 1):
            if n % _PRICE_SLICE == 0:  # the batch's other chunk in flight gets its turn
                await asyncio.sleep(0)
            try:
                pricing = price_receipt(
                    receipts[i], point_value_minor=program.point_value_minor, excluded=excluded
                )
            except Problem:
                continue  # refused by take_on, with the same problem
            sales.append((i, pricing))
        return (currency, menu, sales) if sales else None

    async def _earn_and_visit(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
        resolved: dict[int, Resolved],
        ids: dict[int, UUID],
        menu: dict[str, UUID],
    ) -> tuple[dict[int, ReceiptOut], dict[int, tuple[Move, ...]], list[tuple[int, Pricing]]]:
        """The chunk's guests' points and visits, as Intake._sale would leave them taking one
        receipt after another in file order (a guest's tier counts what their earlier receipts
        of this chunk earned), set-based: points earned together
        (:meth:`PointsPort.earn_many`), visits folded together (``on_visits``)."""
        guests = [resolved[i] for i, _ in sales]
        named = [
            (
                i,
                Earning(
                    g.guest_id, p.earning_paid_minor, till.location_id, earn_reason(receipts[i])
                ),
            )
            for (i, p), g in zip(sales, guests, strict=True)
            if g.guest_id is not None
        ]
        earned = (
            await self.points.earn_many(
                conn, brand_id=till.brand_id, earnings=[e for _, e in named]
            )
            if named
            else []
        )
        points_of = {i: e for (i, _), e in zip(named, earned, strict=True)}
        outs: dict[int, ReceiptOut] = {}
        moves: dict[int, tuple[Move, ...]] = {}
        priced: list[tuple[int, Pricing]] = []
        visits: list[ReceiptVisit] = []
        for (i, pricing), guest in zip(sales, guests, strict=True):
            moves[i] = ()
            if i in points_of:
                pricing = with_points_earned(pricing, points_of[i].points)
                moves[i] = points_of[i].moves
            points = sum(p.points_earned for p in pricing.lines)
            if guest.guest_id is not None:
                visits.append(visit_of(till, receipts[i], guest.guest_id, pricing, points, menu))
            outs[i] = ReceiptOut(
                receipt_id=ids[i],
                points_earned=points,
                guest_id=guest.guest_id,
                guest_unresolved=guest.unresolved,
            )
            priced.append((i, pricing))
        if visits:
            await self.on_visits(conn, visits)
        return outs, moves, priced

    async def _write_sales(
        self,
        conn: asyncpg.Connection,
        till: Till,
        currency: str,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
        ids: dict[int, UUID],
        outs: dict[int, ReceiptOut],
    ) -> dict[int, bytes]:
        """Claim codes for the anonymous sales, then every sale and line in one statement;
        returns each sale's stored answer."""
        anonymous = [(receipts[i], ids[i]) for i, _ in sales if outs[i].guest_id is None]
        codes = await self._claim_codes(conn, till, anonymous) if anonymous else {}
        bodies = {
            i: _encode(msgspec.structs.replace(outs[i], claim_code=codes.get(ids[i])))
            for i, _ in sales
        }
        rows = [
            _SaleRow(
                n, receipts[i].occurred_at, ids[i], receipts[i].external_id,
                pos_customer_of(receipts[i]), p.gross_minor, p.discount_minor,
                p.earning_paid_minor, p.points_tender, bodies[i].decode(), outs[i].guest_id,
                outs[i].points_earned,
            )
            for n, (i, p) in enumerate(sales)
        ]  # fmt: skip
        lines = [row for n, (_, pricing) in enumerate(sales) for row in line_rows(pricing.lines, n)]
        await conn.execute(
            sql.WRITE_SALES, till.brand_id, till.integration_id, till.location_id, currency,
            rows, lines,
        )  # fmt: skip
        return bodies

    async def _claim_codes(
        self, conn: asyncpg.Connection, till: Till, sales: list[tuple[ReceiptIn, UUID]]
    ) -> dict[UUID, str]:
        """A claim code for each sale (receipt id → code), as Intake._claim_code makes one."""
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.pos_claim_window_s)
        codes: dict[UUID, str] = {}
        waiting = sales
        for _ in range(CLAIM_ATTEMPTS):
            proposed = {new_claim_code(): (receipt, rid) for receipt, rid in waiting}
            taken = await conn.fetch(
                sql.INSERT_CLAIMS,
                till.brand_id,
                expires_at,
                list(proposed),
                [receipt.occurred_at for receipt, _ in proposed.values()],
                [rid for _, rid in proposed.values()],
            )
            for row in taken:
                codes[proposed[row["code"]][1]] = row["code"]
            waiting = [(r, rid) for r, rid in waiting if rid not in codes]
            if not waiting:
                return codes
        raise AssertionError("claim codes keep colliding: the alphabet or length is too small")


class _SaleRow(msgspec.Struct, frozen=True):
    """A sale as WRITE_SALES reads it (one JSON object per sale)."""

    n: int
    occurred_at: datetime
    id: UUID
    external_id: str
    pos_customer_id: str | None
    gross_minor: int
    discount_minor: int
    earning_paid_minor: int
    points_tender: int
    response: str
    guest_id: UUID | None
    points_earned: int


@dataclass(frozen=True)
class _ChunkSales:
    """What the sales of one chunk share: the brand's currency, the menu items its SKUs
    name, and the receipt id each sale gets."""

    currency: str
    menu: dict[str, UUID]
    ids: dict[int, UUID]


def _found_by_reads(receipt: ReceiptIn) -> bool:
    """Whether the receipt's guest (if any) is found by reads alone: a phone or a card. A
    QR or a till's customer id may link the guest (a write) as it is resolved."""
    return receipt.guest is None or not (receipt.guest.qr_code or receipt.guest.pos_customer_id)


# Receipts priced between two turns of the other chunk in flight (server/pos/batch.py).
_PRICE_SLICE = 50


def _chunk_digests(till: Till, receipts: Sequence[ReceiptIn]) -> dict[int, bytes]:
    """The request digests of the chunk's receipts that take_many may take set-based: at the
    till's location, with a timezone, their ``external_id`` once in the chunk."""
    counts = Counter(r.external_id for r in receipts)
    return {
        i: request_digest(receipt)
        for i, receipt in enumerate(receipts)
        if receipt.location_id == till.location_id
        and receipt.occurred_at.tzinfo is not None
        and counts[receipt.external_id] == 1
    }

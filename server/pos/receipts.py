"""Receipt intake (DESIGN §10): one receipt, one transaction, idempotent on the till's id.

:meth:`Intake.take` is the use case of ``POST /v1/pos/receipts`` (and of the vendor adapters'
routes, which turn a vendor's object into a :class:`~shared.pos.ReceiptIn` first);
:meth:`Intake.take_on` is the same on a caller's connection, for the batch (whose chunks are
taken set-based where that comes to the same: server/pos/chunks.py). The effects, all in
the caller's transaction: the idempotency row, the receipt and its lines, the guest resolved
(or a claim code), points earned or reversed through :class:`~server.pos.points.PointsPort`,
the guest's aggregates folded forward. A sale is taken in as few statements on ``conn`` outside
a transaction when that gives the same result: one naming no guest in one
(sql.WRITE_ANONYMOUS_SALE), one naming a guest by QR, card or phone in two (the
``guest_sale`` hook: server/pos/guest_sale.py).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from server.infra.db import Database
from server.infra.problems import Problem
from server.pos import sql
from server.pos.auth import Till, key_refused, reread_key
from server.pos.identify import TillGuests
from server.pos.model import (
    PricedLine,
    Pricing,
    Returns,
    SoldLine,
    new_claim_code,
    price_receipt,
    returns_of,
    with_points_earned,
)
from server.pos.points import Move, PointsPort
from server.pos.pricing import TillPricing
from server.settings import Settings
from shared.pos import ReceiptIn, ReceiptOut

__all__ = [
    "CLAIM_ATTEMPTS",
    "GuestSaleHook",
    "Intake",
    "ItemSold",
    "LineRow",
    "PricedSale",
    "ReceiptReturn",
    "ReceiptVisit",
    "ReturnHook",
    "Taken",
    "VisitHook",
    "VisitsHook",
    "earn_reason",
    "item_sold",
    "line_rows",
    "pos_customer_of",
    "request_digest",
    "stored_answer",
    "visit_of",
]

_encode = msgspec.json.Encoder().encode
# Claim codes drawn for a sale before giving up (a collision is one in 10^14 per draw).
CLAIM_ATTEMPTS = 5
_DEADLOCK_RETRIES = 2


@dataclass(frozen=True, slots=True)
class ItemSold:
    """A receipt's line whose SKU the menu knows, as a guest's top items count it."""

    item_id: UUID
    name: str
    quantity: int
    price_minor: int


def item_sold(
    menu: dict[str, UUID], sku: str | None, name: str, quantity: Decimal, unit_price_minor: int
) -> ItemSold | None:
    """A line as the guest's top items count it (a part of one counts as one), or None when
    the menu does not know its SKU: a sale's, a refund's and a claim's lines alike."""
    if sku is None or sku not in menu:
        return None
    return ItemSold(menu[sku], name, max(1, int(quantity)), unit_price_minor)


def earn_reason(receipt: ReceiptIn) -> str:
    """The ledger's reason for what a sale earns."""
    return f"receipt {receipt.external_id}"


def pos_customer_of(receipt: ReceiptIn) -> str | None:
    """The till's own id of the guest the receipt names, if any."""
    return receipt.guest.pos_customer_id if receipt.guest else None


@dataclass(frozen=True, slots=True)
class ReceiptVisit:
    """A guest's visit seen on a till, for their aggregates (DESIGN §11)."""

    guest_id: UUID
    location_id: UUID
    at: datetime
    amount_minor: int
    points: int
    items: tuple[ItemSold, ...] = ()


# Folds a visit into the guest's aggregates, in the caller's transaction (wired in lifespan).
VisitHook = Callable[[asyncpg.Connection, ReceiptVisit], Awaitable[None]]
# The same for many visits, folded in order (a batch's chunk): one profile write per guest.
VisitsHook = Callable[[asyncpg.Connection, Sequence[ReceiptVisit]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReceiptReturn:
    """What a refund on a till gives back of a guest's earlier sale, for their aggregates: the
    money paid for what was returned, the points taken back, the returned items the menu
    knows (as :class:`ReceiptVisit` names them)."""

    guest_id: UUID
    location_id: UUID
    amount_minor: int
    points: int
    items: tuple[ItemSold, ...] = ()


# Folds a refund into the guest's aggregates, in the caller's transaction (wired in lifespan).
ReturnHook = Callable[[asyncpg.Connection, ReceiptReturn], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PricedSale:
    """A sale :meth:`Intake.take` has checked and priced outside a transaction (the till's
    location, a UTC offset, the brand's currency), with the menu items its SKUs name."""

    pricing: Pricing
    menu: dict[str, UUID]
    currency: str


# Takes a sale naming a guest by QR, card or phone in a few statements outside a transaction, as
# take_on would (server/pos/guest_sale.py, wired in lifespan); None: take_on is to take it.
GuestSaleHook = Callable[
    [asyncpg.Connection, Till, ReceiptIn, PricedSale], Awaitable["Taken | None"]
]


@dataclass(frozen=True, slots=True)
class Taken:
    status: Literal["created", "replayed"]
    receipt_id: UUID
    body: bytes
    moves: tuple[Move, ...] = ()


class LineRow(msgspec.Struct, frozen=True):
    """A line of the sale ``n`` of a chunk as WRITE_SALES reads it (and pos_take_guest_sale,
    with ``n`` 0)."""

    n: int
    line_no: int
    sku: str | None
    name: str
    category: str | None
    quantity: Decimal
    unit_price_minor: int
    gross_minor: int
    discount_minor: int
    tax_minor: int
    voided: bool
    gift_card: bool
    earns: bool
    points_paid: int
    paid_minor: int
    points_earned: int


def request_digest(receipt: ReceiptIn) -> bytes:
    """What the receipt says, independent of JSON spacing and field order."""
    return hashlib.sha256(_encode(receipt)).digest()


class Intake:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        points: PointsPort,
        pricing: TillPricing,
        guests: TillGuests,
        on_visit: VisitHook,
        on_return: ReturnHook,
        guest_sale: GuestSaleHook | None = None,
    ) -> None:
        self.settings = settings
        self.guest_sale = guest_sale if settings.pos_guest_sale_fast else None
        self.db = db
        self.points = points
        self.pricing = pricing
        self.guests = guests
        self.on_visit = on_visit
        self.on_return = on_return

    async def take(
        self, till: Till, receipt: ReceiptIn, conn: asyncpg.Connection | None = None
    ) -> Taken:
        """Store ``receipt`` from ``till`` and earn (or reverse) its points, once.

        A replay of the same receipt answers the first answer; another receipt under the same
        ``external_id`` is 409 ``receipt-conflict``. Refuses 404 ``location-not-found`` for a
        location that is not the till's, 422 for a receipt that cannot be priced. ``conn``: a
        pooled connection the caller holds, outside a transaction (the receipt lane checked
        the signature on it); else one is taken from the pool. A ``till`` whose key came from
        the cache (``key_read=False``) is checked by the quick statements, else read before
        take_on: 401 ``invalid-key`` if it was revoked, with nothing written.
        """
        if conn is None:
            async with self.db.connection() as held:
                return await self.take(till, receipt, held)
        if receipt.refund_of is None and (receipt.guest is None or self._plainly_named(receipt)):
            quick = await self._take_quickly(conn, till, receipt)
            if quick is not None:
                if quick.moves:
                    await self.points.mirror(quick.moves)
                return quick
        till = await reread_key(conn, till)  # a key from the cache is read now, as always
        for attempt in range(_DEADLOCK_RETRIES + 1):
            try:
                async with conn.transaction():
                    taken = await self.take_on(conn, till, receipt)
                break
            except asyncpg.TransactionRollbackError:
                # A deadlock with a batch writing the same receipt or guest; PostgreSQL rolled
                # this one back whole, so taking it again is safe (and idempotent).
                if attempt == _DEADLOCK_RETRIES:
                    raise Problem(
                        409, "receipt-busy", "the receipt met a concurrent change; send it again"
                    ) from None
        await self.points.mirror(taken.moves)
        return taken

    def _plainly_named(self, receipt: ReceiptIn) -> bool:
        """A guest named by QR, card number or phone, not by the till's customer id: what the
        guest sale hook takes."""
        named = receipt.guest
        return (
            self.guest_sale is not None
            and named is not None
            and not named.pos_customer_id
            and bool(named.qr_code or named.card_number or named.phone)
        )

    async def _take_quickly(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn
    ) -> Taken | None:
        """A sale naming no guest (one statement, :meth:`_take_anonymous`) or a guest by QR,
        card or phone (``guest_sale``), on ``conn`` outside a transaction: what :meth:`take_on`
        would store and answer.

        None when :meth:`take_on` is to answer instead, which then says what it always said
        in the order it checks: a location or ``occurred_at`` it refuses, a receipt it cannot
        price or in another currency, a deadlock. A key already stored is answered here, as
        take_on does (a replay, or 409 ``receipt-conflict``).
        """
        if receipt.location_id != till.location_id or receipt.occurred_at.tzinfo is None:
            return None
        currency = await self.pricing.currency_of(conn, till)
        if receipt.currency not in (None, currency):
            return None
        try:
            pricing, menu = await self.pricing.price(conn, till, receipt)
        except Problem:
            return None
        if receipt.guest is None:
            return await self._take_anonymous(conn, till, receipt, pricing, currency)
        assert self.guest_sale is not None
        return await self.guest_sale(conn, till, receipt, PricedSale(pricing, menu, currency))

    async def _take_anonymous(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        pricing: Pricing,
        currency: str,
    ) -> Taken | None:
        """A priced sale naming no guest, in one statement (sql.WRITE_ANONYMOUS_SALE); None
        after a deadlock (nothing was written; take_on retries)."""
        digest = request_digest(receipt)
        receipt_id = uuid.uuid4()
        for _ in range(CLAIM_ATTEMPTS):
            try:
                body = await self._write_anonymous(
                    conn, till, receipt, receipt_id, pricing, currency, digest
                )
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "receipt_claims_pkey":
                    raise
                continue  # the claim code is taken: nothing was written, try another
            except asyncpg.TransactionRollbackError:
                return None  # a deadlock: nothing was written; take_on retries
            if body is None:
                return await self._replay(conn, till, receipt, digest)
            return Taken("created", receipt_id, body)
        raise AssertionError("claim codes keep colliding: the alphabet or length is too small")

    async def _write_anonymous(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        receipt_id: UUID,
        pricing: Pricing,
        currency: str,
        digest: bytes,
    ) -> bytes | None:
        """The anonymous sale's one statement; its stored answer, or None if the key was
        already claimed (nothing written). 401 ``invalid-key`` for a till's key that its
        statement found revoked (a Till from the cache: ``key_read=False``)."""
        code = new_claim_code()
        points = sum(p.points_earned for p in pricing.lines)
        body = _encode(ReceiptOut(receipt_id=receipt_id, points_earned=points, claim_code=code))
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.pos_claim_window_s)
        row = await conn.fetchrow(
            sql.WRITE_ANONYMOUS_SALE,
            till.brand_id, receipt.occurred_at, receipt_id, till.integration_id,
            till.location_id, receipt.external_id, currency, pricing.gross_minor,
            pricing.discount_minor, pricing.earning_paid_minor, pricing.points_tender,
            *_line_columns(pricing.lines), body, digest, code, expires_at, points,
            None if till.key_read else till.key_id,
        )  # fmt: skip
        assert row is not None
        if not row["key_active"]:
            raise key_refused()  # revoked since the cache read it: nothing was written
        return body if row["claimed"] else None

    async def ingest(self, till: Till, receipt: ReceiptIn) -> ReceiptOut:
        """:meth:`take`, answered as a Struct (the vendor routes' port onto intake)."""
        return msgspec.json.decode((await self.take(till, receipt)).body, type=ReceiptOut)

    async def currency_of(self, till: Till) -> str:
        """The brand's ISO 4217 currency (a vendor receipt may not carry one)."""
        currency = self.pricing.known_currency(till)
        if currency is None:
            async with self.db.connection() as conn:
                currency = await self.pricing.currency_of(conn, till)
        return currency

    async def take_on(self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn) -> Taken:
        """:meth:`take` in the caller's transaction; the caller mirrors ``moves`` after commit."""
        if receipt.location_id != till.location_id:
            raise Problem(
                404, "location-not-found", f"no location {receipt.location_id} for this key"
            )
        if receipt.occurred_at.tzinfo is None:
            raise Problem(422, "validation-error", "occurred_at needs a UTC offset")
        digest = request_digest(receipt)
        receipt_id = uuid.uuid4()
        claimed = await conn.fetchval(
            sql.CLAIM_RECEIPT_KEY,
            till.integration_id,
            receipt.external_id,
            digest,
            till.brand_id,
            receipt.occurred_at,
            receipt_id,
        )
        if not claimed:
            return await self._replay(conn, till, receipt, digest)
        if receipt.refund_of is not None:
            body, moves = await self._refund(conn, till, receipt, receipt_id)
        else:
            body, moves = await self._sale(conn, till, receipt, receipt_id)
        return Taken("created", receipt_id, body, moves)

    async def _replay(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, digest: bytes
    ) -> Taken:
        row = await conn.fetchrow(sql.RECEIPT_KEY, till.integration_id, receipt.external_id)
        assert row is not None, "the key row is committed or ours"
        return stored_answer(row, receipt, digest)

    # -- a sale ----------------------------------------------------------------------------

    async def _sale(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, receipt_id: UUID
    ) -> tuple[bytes, tuple[Move, ...]]:
        currency = await self.pricing.currency(conn, till, receipt)
        pricing, menu = await self.pricing.price(conn, till, receipt)
        guest = await self.guests.resolve(conn, till, receipt)
        moves: tuple[Move, ...] = ()
        if guest.guest_id is not None:
            earned = await self.points.earn(
                conn,
                brand_id=till.brand_id,
                guest_id=guest.guest_id,
                paid_minor=pricing.earning_paid_minor,
                location_id=till.location_id,
                reason=earn_reason(receipt),
            )
            pricing = with_points_earned(pricing, earned.points)
            moves = earned.moves
        points = sum(p.points_earned for p in pricing.lines)
        claim_code = None
        if guest.guest_id is None:
            claim_code = await self._claim_code(conn, till, receipt, receipt_id)
        else:
            await self._visit(conn, till, receipt, guest.guest_id, pricing, points, menu)
        out = ReceiptOut(
            receipt_id=receipt_id,
            points_earned=points,
            guest_id=guest.guest_id,
            claim_code=claim_code,
            guest_unresolved=guest.unresolved,
        )
        pos_customer = pos_customer_of(receipt)
        body = await self._write(
            conn, till, receipt, receipt_id, pricing, currency, out,
            pos_customer_id=pos_customer, kind="sale",
        )  # fmt: skip
        return body, moves

    async def _write(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        receipt_id: UUID,
        pricing: Pricing,
        currency: str,
        out: ReceiptOut,
        *,
        pos_customer_id: str | None,
        kind: Literal["sale", "refund"],
        refund_of: tuple[UUID, datetime] | None = None,
    ) -> bytes:
        """The receipt, its lines and the stored answer, in one statement; returns the answer."""
        body = _encode(out)
        lines = pricing.lines
        await conn.execute(
            sql.WRITE_RECEIPT,
            till.brand_id, receipt.occurred_at, receipt_id, till.integration_id,
            till.location_id, receipt.external_id, kind,
            refund_of[0] if refund_of else None, refund_of[1] if refund_of else None,
            out.guest_id, pos_customer_id, currency, pricing.gross_minor, pricing.discount_minor,
            pricing.earning_paid_minor, pricing.points_tender, out.points_earned,
            out.points_reversed or 0, out.points_restored or 0, *_line_columns(lines), body,
        )  # fmt: skip
        return body

    async def _claim_code(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, receipt_id: UUID
    ) -> str:
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.pos_claim_window_s)
        for _ in range(CLAIM_ATTEMPTS):
            code = new_claim_code()
            if await conn.fetchval(
                sql.INSERT_CLAIM, code, till.brand_id, receipt.occurred_at, receipt_id, expires_at
            ):
                return code
        raise AssertionError("claim codes keep colliding: the alphabet or length is too small")

    async def _visit(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        guest_id: UUID,
        pricing: Pricing,
        points: int,
        menu: dict[str, UUID],
    ) -> None:
        await self.on_visit(conn, visit_of(till, receipt, guest_id, pricing, points, menu))

    # -- who the guest is ------------------------------------------------------------------

    # -- a refund --------------------------------------------------------------------------

    async def _refund(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, receipt_id: UUID
    ) -> tuple[bytes, tuple[Move, ...]]:
        """Return lines of the sale ``refund_of`` names: each returned part of a line gives
        back its share of the points that paid for it and takes back its share of the points
        it earned (:func:`~server.pos.model.refund_share`), exactly once per unit returned.
        Refuses 422 ``unknown-sale`` and ``refund-exceeds-sale``."""
        currency = await self.pricing.currency(conn, till, receipt)
        sale = await conn.fetchrow(sql.SALE_OF_INTEGRATION, till.integration_id, receipt.refund_of)
        if sale is None or sale["kind"] != "sale":
            raise Problem(
                422, "unknown-sale", f"no sale {receipt.refund_of!r} from this till to refund"
            )
        key = (sale["brand_id"], sale["occurred_at"], sale["id"])
        sold = [
            SoldLine(
                r["line_no"], r["sku"], r["name"], r["unit_price_minor"], r["quantity"],
                r["refunded_quantity"], r["points_earned"], r["points_paid"], r["paid_minor"],
            )
            for r in await conn.fetch(sql.SALE_LINES_FOR_UPDATE, *key)
        ]  # fmt: skip
        returns = returns_of(receipt.lines, sold)
        numbers = list(returns.quantities)
        await conn.execute(sql.MARK_RETURNED, *key, numbers, list(returns.quantities.values()))
        reversed_points, restored = returns.points_reversed, returns.points_restored
        pricing = price_receipt(receipt, point_value_minor=1, excluded=lambda _: True)
        guest_id: UUID | None = sale["guest_id"]
        moves: tuple[Move, ...] = ()
        if guest_id is not None:
            moves = await self.points.reverse(
                conn,
                brand_id=till.brand_id,
                guest_id=guest_id,
                points_reversed=reversed_points,
                points_restored=restored,
                location_id=till.location_id,
                reason=f"refund {receipt.external_id} of {receipt.refund_of}",
            )
            await self.on_return(
                conn, await self._return_of(conn, till, receipt, guest_id, sold, returns)
            )
        else:
            reversed_points = restored = 0
        out = ReceiptOut(
            receipt_id=receipt_id,
            points_earned=0,
            guest_id=guest_id,
            points_reversed=reversed_points,
            points_restored=restored,
        )
        body = await self._write(
            conn, till, receipt, receipt_id, pricing, currency, out,
            pos_customer_id=None, kind="refund", refund_of=(sale["id"], sale["occurred_at"]),
        )  # fmt: skip
        return body, moves

    async def _return_of(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipt: ReceiptIn,
        guest_id: UUID,
        sold: Sequence[SoldLine],
        returns: Returns,
    ) -> ReceiptReturn:
        """What ``returns`` gives back of the guest's sale, for their aggregates: the items
        named as their visit named them (the sale's SKUs the menu knows)."""
        _, menu = await self.pricing.catalogue_of(conn, till, (receipt,))
        by_no = {line.line_no: line for line in sold}
        returned = (
            item_sold(menu, by_no[n].sku, by_no[n].name, quantity, by_no[n].unit_price_minor)
            for n, quantity in returns.quantities.items()
        )
        items = tuple(item for item in returned if item is not None)
        return ReceiptReturn(
            guest_id, till.location_id, returns.paid_minor, returns.points_reversed, items
        )


def stored_answer(row: asyncpg.Record, receipt: ReceiptIn, digest: bytes) -> Taken:
    """The answer to a receipt whose key is stored (``row``: RECEIPT_KEY's columns): the
    stored answer replayed, or 409 ``receipt-conflict`` for another receipt under its id."""
    if bytes(row["request_hash"]) != digest:
        raise Problem(
            409,
            "receipt-conflict",
            f"receipt {receipt.external_id!r} was already sent with different content",
        )
    assert row["response"] is not None, "a claimed key is finished in its transaction"
    return Taken("replayed", row["receipt_id"], bytes(row["response"]))


def line_rows(lines: Sequence[PricedLine], n: int = 0) -> list[LineRow]:
    """The priced lines of one sale (the ``n``-th of a chunk) as WRITE_SALES (and
    pos_take_guest_sale) read them."""
    return [
        LineRow(
            n, p.line_no, p.line.sku, p.line.name, p.line.category, p.line.quantity,
            p.line.unit_price_minor, p.gross_minor, p.discount_minor, p.line.tax_minor,
            p.line.voided, p.line.gift_card, p.earns, p.points_paid, p.paid_minor,
            p.points_earned,
        )
        for p in lines
    ]  # fmt: skip


def _line_columns(lines: Sequence[PricedLine]) -> list[list[object]]:
    """The priced lines as the columns the receipt writes unnest, in their order."""
    return [
        [p.line_no for p in lines],
        [p.line.sku for p in lines],
        [p.line.name for p in lines],
        [p.line.category for p in lines],
        [p.line.quantity for p in lines],
        [p.line.unit_price_minor for p in lines],
        [p.gross_minor for p in lines],
        [p.discount_minor for p in lines],
        [p.line.tax_minor for p in lines],
        [p.line.voided for p in lines],
        [p.line.gift_card for p in lines],
        [p.earns for p in lines],
        [p.points_paid for p in lines],
        [p.paid_minor for p in lines],
        [p.points_earned for p in lines],
    ]


def visit_of(
    till: Till,
    receipt: ReceiptIn,
    guest_id: UUID,
    pricing: Pricing,
    points: int,
    menu: dict[str, UUID],
) -> ReceiptVisit:
    """The guest's visit a priced sale makes, for their aggregates."""
    sold = (
        item_sold(menu, p.line.sku, p.line.name, p.line.quantity, p.line.unit_price_minor)
        for p in pricing.lines
        if not p.line.voided
    )
    items = tuple(item for item in sold if item is not None)
    paid = sum(p.paid_minor for p in pricing.lines if not p.line.voided)
    return ReceiptVisit(guest_id, till.location_id, receipt.occurred_at, paid, points, items)

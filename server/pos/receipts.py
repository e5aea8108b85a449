"""Receipt intake (DESIGN §10): one receipt, one transaction, idempotent on the till's id.

:meth:`Intake.take` is the use case of ``POST /v1/pos/receipts`` (and of the vendor adapters'
routes, which turn a vendor's object into a :class:`~shared.pos.ReceiptIn` first);
:meth:`Intake.take_on` is the same on a caller's connection, for the batch. The effects, all in
the caller's transaction: the idempotency row, the receipt and its lines, the guest resolved
(or a claim code), points earned or reversed through :class:`~server.pos.points.PointsPort`,
the guest's aggregates folded forward. A sale is taken in as few statements on ``conn`` outside
a transaction when that gives the same result: one naming no guest in one
(sql.WRITE_ANONYMOUS_SALE), one naming a guest by QR, card or phone in two (the
``guest_sale`` hook: server/pos/guest_sale.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

import asyncpg
import msgspec

from server.guests import identities
from server.infra.db import Database
from server.infra.problems import Problem
from server.pos import identify, sql
from server.pos.auth import Till, key_refused, reread_key
from server.pos.catalogue import CatalogueCache
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
from server.pos.points import Earning, Move, PointsPort
from server.settings import Settings
from shared.pos import ReceiptIn, ReceiptLineIn, ReceiptOut

__all__ = [
    "GuestSaleHook",
    "Intake",
    "PricedSale",
    "ReceiptReturn",
    "ReceiptVisit",
    "ReturnHook",
    "Taken",
    "VisitHook",
    "VisitsHook",
    "line_rows",
    "request_digest",
    "stored_answer",
    "visit_of",
]

_encode = msgspec.json.Encoder().encode
_CLAIM_ATTEMPTS = 5
_DEADLOCK_RETRIES = 2


@dataclass(frozen=True, slots=True)
class ReceiptVisit:
    """A guest's visit seen on a till, for their aggregates (DESIGN §11)."""

    guest_id: UUID
    location_id: UUID
    at: datetime
    amount_minor: int
    points: int
    # (menu item id, name, quantity, unit price) of the lines whose SKU the menu knows.
    items: tuple[tuple[UUID, str, int, int], ...] = ()


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
    items: tuple[tuple[UUID, str, int, int], ...] = ()


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


@dataclass(frozen=True, slots=True)
class _Guest:
    guest_id: UUID | None
    # Why a named guest was not resolved (an expired or forged QR): kept anonymous.
    unresolved: str | None = None


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


class _LineRow(msgspec.Struct, frozen=True):
    """A line of the sale ``n`` as WRITE_SALES reads it."""

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


def _pos_customer(receipt: ReceiptIn) -> str | None:
    return receipt.guest.pos_customer_id if receipt.guest else None


def request_digest(receipt: ReceiptIn) -> bytes:
    """What the receipt says, independent of JSON spacing and field order."""
    return hashlib.sha256(_encode(receipt)).digest()


class Intake:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        points: PointsPort,
        on_visit: VisitHook,
        on_visits: VisitsHook,
        on_return: ReturnHook,
        guest_sale: GuestSaleHook | None = None,
    ) -> None:
        self.settings = settings
        self.guest_sale = guest_sale if settings.pos_guest_sale_fast else None
        self.db = db
        self.points = points
        self.on_visit = on_visit
        self.on_visits = on_visits
        self.on_return = on_return
        self._phones = identify.PhoneForms(settings.pos_phones_remembered)
        self._currencies: dict[UUID, str] = {}
        self.catalogue = CatalogueCache(
            settings.menu_cache_ttl_s, settings.pos_catalogue_cache_entries
        )

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
        currency = await self._currency_of(conn, till)
        if receipt.currency not in (None, currency):
            return None
        try:
            pricing, menu = await self._price(conn, till, receipt)
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
        for _ in range(_CLAIM_ATTEMPTS):
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
        currency = self._currencies.get(till.brand_id)
        if currency is None:
            async with self.db.connection() as conn:
                currency = await self._remember_currency(till, conn)
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

    async def take_many(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        after: asyncio.Event | None = None,
    ) -> list[Taken | None]:
        """What :meth:`take_on` would answer for a chunk of receipts, set-based where that is
        the same: replays of receipts stored before, and sales (one key claim, one catalogue read,
        one claim-code insert and one write for the whole chunk; the named guests looked up,
        their points earned and their visits folded per chunk, in file order: see
        :meth:`_earn_and_visit`). None for a receipt the caller takes
        with :meth:`take_on` (a refund, one that is refused or conflicts, one whose key
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
        sales = [(i, p) for i, p in sales if receipts[i].external_id in claimed]
        if not sales:
            return answers
        sale = _ChunkSales(currency, menu, ids)
        taken: dict[int, tuple[bytes, tuple[Move, ...]]] = {}
        resolved: dict[int, _Guest] | None = None
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

    async def _guests_of(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
    ) -> dict[int, _Guest]:
        guests = await self._resolve_guests(conn, till, [receipts[i] for i, _ in sales])
        return dict(zip((i for i, _ in sales), guests, strict=True))

    async def _take_sales(
        self,
        conn: asyncpg.Connection,
        till: Till,
        receipts: Sequence[ReceiptIn],
        sales: list[tuple[int, Pricing]],
        guests: dict[int, _Guest],
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
        currency = await self._currency_of(conn, till)
        candidates = [i for i in candidates if receipts[i].currency in (None, currency)]
        excluded, menu = await self._catalogue(conn, till, [receipts[i] for i in candidates])
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
        resolved: dict[int, _Guest],
        ids: dict[int, UUID],
        menu: dict[str, UUID],
    ) -> tuple[dict[int, ReceiptOut], dict[int, tuple[Move, ...]], list[tuple[int, Pricing]]]:
        """The chunk's guests' points and visits, as _sale would leave them taking one
        receipt after another in file order (a guest's tier counts what their earlier receipts
        of this chunk earned), set-based: points earned together
        (:meth:`PointsPort.earn_many`), visits folded together (``on_visits``)."""
        guests = [resolved[i] for i, _ in sales]
        named = [
            (i, Earning(g.guest_id, p.earning_paid_minor, till.location_id, _reason(receipts[i])))
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

    async def _resolve_guests(
        self, conn: asyncpg.Connection, till: Till, receipts: Sequence[ReceiptIn]
    ) -> list[_Guest]:
        """:meth:`_resolve_guest` of each receipt, in order: the cards and phones of the chunk
        looked up in one query each; a receipt naming a QR or the till's customer id is
        resolved on its own (in order: a customer id linked by one counts for the next)."""
        plain = [
            r.guest
            for r in receipts
            if r.guest and not (r.guest.qr_code or r.guest.pos_customer_id)
        ]
        cards = {g.card_number for g in plain if g.card_number}
        phones = {g.phone for g in plain if g.phone}
        by_card = await identify.by_cards(conn, till.brand_id, cards) if cards else {}
        by_phone = (
            await identify.by_phones(conn, till.brand_id, phones, self._phones) if phones else {}
        )
        guests: list[_Guest] = []
        for receipt in receipts:
            named = receipt.guest
            if named is None:
                guests.append(_Guest(None))
            elif named.qr_code or named.pos_customer_id:
                guests.append(await self._resolve_guest(conn, till, receipt))
            else:
                guest_id = by_card.get(named.card_number) if named.card_number else None
                if guest_id is None and named.phone:
                    guest_id = by_phone.get(named.phone)
                guests.append(_Guest(guest_id))
        return guests

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
                _pos_customer(receipts[i]), p.gross_minor, p.discount_minor,
                p.earning_paid_minor, p.points_tender, bodies[i].decode(), outs[i].guest_id,
                outs[i].points_earned,
            )
            for n, (i, p) in enumerate(sales)
        ]  # fmt: skip
        lines = [
            _LineRow(
                n, p.line_no, p.line.sku, p.line.name, p.line.category, p.line.quantity,
                p.line.unit_price_minor, p.gross_minor, p.discount_minor, p.line.tax_minor,
                p.line.voided, p.line.gift_card, p.earns, p.points_paid, p.paid_minor,
                p.points_earned,
            )
            for n, (_, pricing) in enumerate(sales)
            for p in pricing.lines
        ]  # fmt: skip
        await conn.execute(
            sql.WRITE_SALES, till.brand_id, till.integration_id, till.location_id, currency,
            rows, lines,
        )  # fmt: skip
        return bodies

    async def _currency_of(self, conn: asyncpg.Connection, till: Till) -> str:
        currency = self._currencies.get(till.brand_id)
        return currency if currency is not None else await self._remember_currency(till, conn)

    async def _catalogue(
        self, conn: asyncpg.Connection, till: Till, receipts: Sequence[ReceiptIn]
    ) -> tuple[Callable[[ReceiptLineIn], bool], dict[str, UUID]]:
        """Whether a line earns nothing by the catalogue, and the menu items the SKUs name
        (as :meth:`_price` reads them), read once for all of ``receipts``."""
        lines = [line for receipt in receipts for line in receipt.lines]
        catalogue = await self.catalogue.read(
            conn,
            till.brand_id,
            {line.sku for line in lines if line.sku},
            {line.category for line in lines if line.category},
        )

        def excluded(line: ReceiptLineIn) -> bool:
            return catalogue.excluded(line.sku, line.category)

        return excluded, catalogue.menu()

    async def _claim_codes(
        self, conn: asyncpg.Connection, till: Till, sales: list[tuple[ReceiptIn, UUID]]
    ) -> dict[UUID, str]:
        """A claim code for each sale (receipt id → code), as :meth:`_claim_code` makes one."""
        expires_at = datetime.now(UTC) + timedelta(seconds=self.settings.pos_claim_window_s)
        codes: dict[UUID, str] = {}
        waiting = sales
        for _ in range(_CLAIM_ATTEMPTS):
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

    async def _replay(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, digest: bytes
    ) -> Taken:
        row = await conn.fetchrow(sql.RECEIPT_KEY, till.integration_id, receipt.external_id)
        assert row is not None, "the key row is committed or ours"
        return stored_answer(row, receipt, digest)

    # -- a sale ----------------------------------------------------------------------------

    async def _price(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn
    ) -> tuple[Pricing, dict[str, UUID]]:
        """The receipt priced by the brand's rules, and the menu items its SKUs name (the
        catalogue as read within ``menu_cache_ttl_s``: server/pos/catalogue.py)."""
        excluded, menu = await self._catalogue(conn, till, (receipt,))
        program = await self.points.program(conn, till.brand_id)
        pricing = price_receipt(
            receipt, point_value_minor=program.point_value_minor, excluded=excluded
        )
        return pricing, menu

    async def _sale(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, receipt_id: UUID
    ) -> tuple[bytes, tuple[Move, ...]]:
        currency = await self._currency(conn, till, receipt)
        pricing, menu = await self._price(conn, till, receipt)
        guest = await self._resolve_guest(conn, till, receipt)
        moves: tuple[Move, ...] = ()
        if guest.guest_id is not None:
            earned = await self.points.earn(
                conn,
                brand_id=till.brand_id,
                guest_id=guest.guest_id,
                paid_minor=pricing.earning_paid_minor,
                location_id=till.location_id,
                reason=f"receipt {receipt.external_id}",
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
        pos_customer = receipt.guest.pos_customer_id if receipt.guest else None
        body = await self._write(
            conn, till, receipt, receipt_id, pricing, currency, out,
            pos_customer_id=pos_customer, kind="sale",
        )  # fmt: skip
        return body, moves

    async def _currency(self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn) -> str:
        """The brand's currency; 422 ``currency-mismatch`` for a receipt in another one."""
        currency = self._currencies.get(till.brand_id)
        if currency is None:
            currency = await self._remember_currency(till, conn)
        if receipt.currency is not None and receipt.currency != currency:
            raise Problem(
                422, "currency-mismatch", f"this brand takes {currency}, not {receipt.currency}"
            )
        return currency

    async def _remember_currency(self, till: Till, conn: asyncpg.Connection) -> str:
        # A brand's currency never changes, so it is kept once read.
        currency = self._currencies[till.brand_id] = str(
            await conn.fetchval(sql.BRAND_CURRENCY, till.brand_id)
        )
        return currency

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
        for _ in range(_CLAIM_ATTEMPTS):
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

    async def _resolve_guest(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn
    ) -> _Guest:
        """The guest the till named, tried QR, card, phone, then the till's customer id.

        A QR is checked against its validity when it was scanned (``scanned_at``, else when
        the sale happened), so an offline till's receipt hours late still counts. A QR that
        is forged or was already expired keeps the receipt anonymous (with a claim code), and
        the answer says why: the sale happened, the till cannot ask the guest again.
        """
        named = receipt.guest
        if named is None:
            return _Guest(None)
        guest_id: UUID | None = None
        unresolved: str | None = None
        if named.qr_code:
            guest_id, unresolved = await self._by_qr(till, receipt, conn, named.qr_code)
        if guest_id is None and named.card_number:
            guest_id = await identify.by_card(conn, till.brand_id, named.card_number)
        if guest_id is None and named.phone:
            guest_id = await identify.by_phone(conn, till.brand_id, named.phone)
        customer = named.pos_customer_id
        if customer and guest_id is None:
            guest_id = await identities.by_pos_customer(
                conn, till.brand_id, till.integration_id, customer
            )
        elif customer and guest_id is not None:
            await identities.link_pos_customer(
                conn, till.brand_id, guest_id, till.integration_id, customer
            )
        return _Guest(guest_id, None if guest_id else unresolved)

    async def _by_qr(
        self, till: Till, receipt: ReceiptIn, conn: asyncpg.Connection, code: str
    ) -> tuple[UUID | None, str | None]:
        """The QR judged at its scan time, which may be at most ``pos_scan_max_age_s`` ago."""
        named = receipt.guest
        at = (named.scanned_at if named and named.scanned_at else None) or receipt.occurred_at
        if at.tzinfo is None:
            return None, "malformed"
        now = datetime.now(UTC)
        skew = timedelta(seconds=self.settings.scan_clock_skew_s)
        if at > now + skew or at < now - timedelta(seconds=self.settings.pos_scan_max_age_s):
            return None, "expired"
        return await identify.by_qr(conn, self.settings, till.brand_id, code, at)

    # -- a refund --------------------------------------------------------------------------

    async def _refund(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn, receipt_id: UUID
    ) -> tuple[bytes, tuple[Move, ...]]:
        """Return lines of the sale ``refund_of`` names: each returned part of a line gives
        back its share of the points that paid for it and takes back its share of the points
        it earned (:func:`~server.pos.model.refund_share`), exactly once per unit returned.
        Refuses 422 ``unknown-sale`` and ``refund-exceeds-sale``."""
        currency = await self._currency(conn, till, receipt)
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
        _, menu = await self._catalogue(conn, till, (receipt,))
        by_no = {line.line_no: line for line in sold}
        items = []
        for line_no, quantity in returns.quantities.items():
            line = by_no[line_no]
            if line.sku is not None and line.sku in menu:
                items.append(
                    (menu[line.sku], line.name, max(1, int(quantity)), line.unit_price_minor)
                )
        return ReceiptReturn(
            guest_id, till.location_id, returns.paid_minor, returns.points_reversed, tuple(items)
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


def line_rows(lines: Sequence[PricedLine]) -> list[_LineRow]:
    """The priced lines of one sale as WRITE_SALES (and pos_take_guest_sale) read them."""
    return [
        _LineRow(
            0, p.line_no, p.line.sku, p.line.name, p.line.category, p.line.quantity,
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


def _reason(receipt: ReceiptIn) -> str:
    return f"receipt {receipt.external_id}"


def visit_of(
    till: Till,
    receipt: ReceiptIn,
    guest_id: UUID,
    pricing: Pricing,
    points: int,
    menu: dict[str, UUID],
) -> ReceiptVisit:
    """The guest's visit a priced sale makes, for their aggregates."""
    items = tuple(
        (menu[p.line.sku], p.line.name, max(1, int(p.line.quantity)), p.line.unit_price_minor)
        for p in pricing.lines
        if p.line.sku in menu and not p.line.voided
    )
    paid = sum(p.paid_minor for p in pricing.lines if not p.line.voided)
    return ReceiptVisit(guest_id, till.location_id, receipt.occurred_at, paid, points, items)

"""The checkout: price the order, hold the points, create it, exactly once per key.

The hot path: the menu comes from the cache, Redis admits the spend (one call, two on a
disagreement), and the writes are one statement (``place_order``, migrations 0007, 0009 and 0012)
with no query per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from server.catalog.model import (
    BOOKING_HORIZON,
    Location,
    MenuIndex,
    is_open,
    slot_runs_rest_of_day,
    slot_start,
)
from server.catalog.service import Catalog
from server.infra import idempotency
from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import Principal
from server.infra.problems import Problem, database_busy
from server.loyalty.model import AccountState, Program
from server.loyalty.service import Loyalty, insufficient_points
from server.orders import sql
from server.orders.model import (
    Promo,
    Quote,
    discount_for,
    draft_order,
    price_lines,
    quote,
    split_earning,
)
from server.orders.views import announce
from server.settings import Settings
from shared import contract

__all__ = [
    "ORDERS_ROUTE",
    "Checkout",
    "Created",
    "Pickup",
    "PlaceOrderCall",
    "PlaceOrderStatement",
    "guest_cap_reached",
]

_encode = msgspec.json.Encoder().encode
# Transfer ids of spends derive from the idempotency key, so a retried checkout reserves the
# same hold in Redis (an 'exists', not a second hold).
_SPEND_NAMESPACE = uuid.UUID("6f1c1d3e-3f7a-4c35-9a43-2f0b8f2b1e01")
ORDERS_ROUTE = "POST /v1/orders"


@dataclass(frozen=True, slots=True)
class Pickup:
    """When the guest collects, and the candidate slots as runs of (first, last) slot starts:
    the asked time's slot, or (``asap``: none asked) every open slot left in the location's
    day, of which place_order takes the earliest with room."""

    at: datetime
    runs: list[tuple[datetime, datetime]]
    asap: bool


@dataclass(frozen=True, slots=True)
class Created:
    """A committed checkout: the account after its hold (None: no points spent; posted when
    the order was paid in full), the order at the guest's tier, and the stored response."""

    state: AccountState | None
    order: contract.Order
    response: bytes


@dataclass(frozen=True, slots=True)
class PlaceOrderCall:
    """Everything one call of ``place_order`` writes."""

    guest: Principal
    order: contract.Order  # drafted at the base tier
    priced: Quote
    promo: Promo | None
    transfer_id: UUID
    redeemed_account_id: UUID | None  # None when no points are spent
    hold_timeout: datetime
    pickup: Pickup
    location: Location  # its slot length and how many orders a slot takes
    request: IdempotentRequest
    tier_floors: list[int]
    variants: list[contract.Order]  # the order at each tier, lowest first
    responses: list[bytes]  # each variant encoded
    # One guest's share (migration 0010): unpaid orders at once, orders in one pickup slot.
    unpaid_orders_per_guest: int
    slot_places_per_guest: int


_GUEST_CAPS = frozenset({"too-many-unpaid-orders", "too-many-orders-in-slot"})


def guest_cap_reached(slug: str) -> Problem:
    """409 for a checkout over one guest's share (place_order's caps, migration 0010)."""
    if slug == "too-many-unpaid-orders":
        detail = "you have too many orders waiting for payment; pay or cancel one first"
    else:
        detail = "you already hold the most orders allowed in this pickup slot; choose another"
    return Problem(409, slug, detail)


class PlaceOrderStatement:
    """The checkout's one statement. Injected into :class:`Checkout`, so that a test can put
    a fake in its place (a failure point, a statement that outlives its request)."""

    async def run(self, conn: asyncpg.Connection, call: PlaceOrderCall) -> asyncpg.Record:
        """Call place_order and turn its refusals into problems: 422 ``insufficient-points``,
        409 ``slot-full``, 409 for a guest over their share (:func:`guest_cap_reached`). Returns its one row (``claimed``, ``tier``, the account after the
        hold)."""
        order, priced, guest = call.order, call.priced, call.guest
        lines = [
            {
                "id": str(line.id), "line_no": n, "item_id": str(line.item_id), "sku": line.sku,
                "name": line.name, "quantity": line.quantity,
                "unit_price_minor": line.unit_price_minor,
                "modifier_ids": [str(m) for m in source.modifier_ids],
                "modifier_names": line.modifiers, "gross_minor": line.gross_minor,
                "discount_minor": line.discount_minor, "points_spent": line.points_spent,
                "paid_minor": line.paid_minor, "earns_points": source.earns_points,
            }
            for n, (line, source) in enumerate(zip(order.lines, priced.lines, strict=True))
        ]  # fmt: skip
        request = call.request
        try:
            row = await conn.fetchrow(
                sql.PLACE_ORDER, request.scope, request.key, request.digest, guest.subject_id,
                call.tier_floors, [v.points_to_earn for v in call.variants], call.responses,
                order.points_spent, call.transfer_id, call.redeemed_account_id,
                call.hold_timeout, order.id, guest.brand_id, order.location_id, order.status,
                order.currency, order.subtotal_minor, order.discount_minor,
                order.points_value_minor, order.amount_due_minor,
                call.promo.id if call.promo else None,
                None if call.pickup.asap else order.pickup_at, order.payment_expires_at,
                order.created_at, lines, [first for first, _ in call.pickup.runs],
                [last for _, last in call.pickup.runs], call.location.slot_minutes,
                call.location.orders_per_slot, call.unpaid_orders_per_guest,
                call.slot_places_per_guest,
            )  # fmt: skip
        except asyncpg.RaiseError as refused:
            if refused.message == "insufficient-points":
                spendable = int(refused.detail) if refused.detail else None
                raise insufficient_points(order.points_spent, spendable) from None
            if refused.message in _GUEST_CAPS:
                raise guest_cap_reached(refused.message) from None
            if refused.message == "slot-full":
                raise Problem(
                    409,
                    "slot-full",
                    f"the pickup slot at {call.pickup.runs[0][0].isoformat()} is full; "
                    "choose another",
                ) from None
            raise
        assert row is not None
        return row


class Checkout:
    """POST /v1/orders (served by the lane in server/orders/lane.py, or by the controller)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        loyalty: Loyalty,
        statement: PlaceOrderStatement | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.catalog = catalog
        self.loyalty = loyalty
        self.statement = statement or PlaceOrderStatement()
        self._promos = SingleFlightCache(self._load_promos, settings.menu_cache_ttl_s, "promo")
        self._in_flight = asyncio.Semaphore(settings.checkouts_in_flight)

    async def place(self, guest: Principal, body: contract.OrderIn, key: str) -> Stored:
        """Price, reserve points and create the order, exactly once per Idempotency-Key.

        At most ``checkouts_in_flight`` run at once; one that waits longer than
        ``db_acquire_timeout_s`` for its turn is refused 503 ``database-busy``.
        """
        try:
            async with asyncio.timeout(self.settings.db_acquire_timeout_s):
                await self._in_flight.acquire()
        except TimeoutError:
            raise database_busy("too many checkouts at once; try again in a moment") from None
        try:
            return await self._place(guest, body, key)
        except Problem as refused:
            if body.pickup_at is None and refused.slug in ("slot-full", "location-closed"):
                raise await self._no_room_today(body.location_id, refused) from None
            raise
        finally:
            self._in_flight.release()

    async def _place(self, guest: Principal, body: contract.OrderIn, key: str) -> Stored:
        request = IdempotentRequest.of(f"guest:{guest.subject_id}:orders", key, ORDERS_ROUTE, body)
        index = await self.catalog.menu(body.location_id)
        if index.location.brand_id != guest.brand_id:
            raise Problem(404, "location-not-found", f"no location {body.location_id}")
        if len(body.lines) > self.settings.max_lines_per_order:
            raise Problem(
                422,
                "too-many-lines",
                f"an order takes at most {self.settings.max_lines_per_order} lines",
            )
        now = datetime.now(UTC)
        pickup = self._pickup(index, body.pickup_at, now)
        lines = price_lines(index, list(body.lines), self.settings.max_quantity_per_line)
        program = await self.loyalty.programs.get(guest.brand_id)
        promo = await self._promo(guest.brand_id, body.promo_code) if body.promo_code else None
        subtotal = sum(line.gross_minor for line in lines)
        discount = discount_for(promo, subtotal, now) if promo else 0
        # Priced at the base tier; what the order earns at the guest's tier is settled by
        # place_order, which reads the tier (_create).
        priced = quote(program, program.tiers[0], lines, discount, body.points_to_spend)

        transfer_id = uuid.uuid5(_SPEND_NAMESPACE, f"{request.scope}:{key}")
        points = priced.points_spent
        async with self.loyalty.spend(guest.subject_id, transfer_id, points, request) as spend:
            if spend.replay is not None:
                return spend.replay
            created = await self._create(
                guest, index, program, priced, promo, transfer_id, pickup, now, request
            )
            if isinstance(created, Stored):
                return created
            # Only now: the writes have committed (place_order is one statement, or the
            # transaction around it has ended).
            placed = created.order.status == "placed"
            spend.committed(created.state, posted=placed and points > 0)
        return Stored(201, created.response)

    def _pickup(self, index: MenuIndex, asked: datetime | None, now: datetime) -> Pickup:
        location = index.location
        if asked is None:
            runs = slot_runs_rest_of_day(location, now)
            if not runs:
                raise Problem(
                    422, "location-closed", f"{location.name} is closed for the rest of today"
                )
            return Pickup(runs[0][0], runs, asap=True)
        else:
            if asked.tzinfo is None:
                raise Problem(422, "invalid-pickup-time", "pickup_at needs a timezone offset")
            try:
                pickup = asked.astimezone(UTC)
            except OverflowError:  # 0001-01-01T00:00+14:00: before the first representable UTC
                raise Problem(422, "invalid-pickup-time", "pickup_at is out of range") from None
            if pickup < now + timedelta(minutes=location.lead_time_min):
                raise Problem(
                    422,
                    "pickup-too-soon",
                    f"the earliest pickup is {location.lead_time_min} minutes from now",
                )
            if pickup > now + BOOKING_HORIZON:
                raise Problem(
                    422,
                    "pickup-too-far",
                    f"orders can be placed at most {BOOKING_HORIZON.days} days ahead",
                )
        if not is_open(location, pickup):
            raise Problem(
                422, "location-closed", f"{location.name} is closed at {pickup.isoformat()}"
            )
        slot = slot_start(location, pickup)
        return Pickup(pickup, [(slot, slot)], asap=False)

    async def _no_room_today(self, location_id: UUID, refusal: Problem) -> Problem:
        """An "as soon as possible" checkout found no slot with room in the rest of the
        location's day (or none open): the refusal names the next time that has room, null
        when none has within the booking horizon."""
        location = (await self.catalog.menu(location_id)).location
        found = await self.catalog.next_free_slot(location, datetime.now(UTC))
        detail = (
            f"no pickup slot at {location.name} has room for the rest of today"
            if refusal.slug == "slot-full"
            else refusal.detail
        )
        return Problem(
            refusal.status,
            refusal.slug,
            detail,
            next_available_at=found.isoformat() if found else None,
        )

    async def _promo(self, brand_id: UUID, code: str) -> Promo:
        promo = (await self._promos.get(brand_id)).get(code.strip().upper())
        if promo is None:
            raise Problem(422, "unknown-promo-code", f"there is no promo code {code!r}")
        return promo

    async def _load_promos(self, brand_id: UUID) -> dict[str, Promo]:
        rows = await self.db.fetch(sql.PROMOS, brand_id)
        return {r["code"].upper(): Promo(**dict(r)) for r in rows}

    async def _create(
        self,
        guest: Principal,
        index: MenuIndex,
        program: Program,
        priced: Quote,
        promo: Promo | None,
        transfer_id: UUID,
        pickup: Pickup,
        now: datetime,
        request: IdempotentRequest,
    ) -> Stored | Created:
        """The checkout's writes: the key, the hold, the order with its lines, the slot and the
        stored response in one call of ``place_order`` (one round trip, no BEGIN/COMMIT). A
        promo code, or an order paid in full, adds statements after it in one transaction.
        Returns the stored response when the key was used before; refusals raise Problem and
        leave nothing written. As soon as possible (``pickup.asap``), the order goes to the
        earliest candidate slot with room: rendered here with the first, named by place_order."""
        window = timedelta(seconds=self.settings.payment_window_s)
        drafted = draft_order(uuid.uuid4(), guest.subject_id, index, priced, pickup.at, now, window)
        variants = _at_every_tier(program, drafted, priced)
        adds_statements = promo is not None or drafted.status == "placed"
        async with self.db.connection() as conn:
            redeemed = (
                await self.loyalty.redeemed_account(conn, guest.brand_id)
                if priced.points_spent
                else None
            )
            async with conn.transaction() if adds_statements else contextlib.nullcontext():
                call = PlaceOrderCall(
                    guest=guest, order=drafted, priced=priced, promo=promo,
                    transfer_id=transfer_id, redeemed_account_id=redeemed,
                    hold_timeout=now + window, pickup=pickup, location=index.location,
                    request=request,
                    tier_floors=[t.min_points for t in program.tiers], variants=variants,
                    responses=[_encode(v) for v in variants],
                    unpaid_orders_per_guest=self.settings.unpaid_orders_per_guest,
                    slot_places_per_guest=self.settings.slot_places_per_guest,
                )  # fmt: skip
                row = await self.statement.run(conn, call)
                if not row["claimed"]:
                    return await idempotency.stored(
                        conn, request.scope, request.key, request.digest
                    )
                return await self._after_statement(conn, call, row)

    async def _after_statement(
        self, conn: asyncpg.Connection, call: PlaceOrderCall, row: asyncpg.Record
    ) -> Created:
        """The order at the guest's tier, and the statements a promo code or an order paid in
        full adds in the same transaction."""
        order, response = call.variants[row["tier"] - 1], call.responses[row["tier"] - 1]
        if call.pickup.asap and row["chosen_slot"] != order.pickup_at:  # a later slot had room
            order = msgspec.structs.replace(order, pickup_at=row["chosen_slot"])
            response = _encode(order)
        state = None if row["version"] is None else AccountState(
            posted=row["posted"], pending=row["pending"], version=row["version"]
        )  # fmt: skip
        if call.promo is not None:
            await self._use_promo(conn, call.promo, order)
        if order.status == "placed" and state is not None:
            hold = await self.loyalty.hold_of(conn, call.transfer_id)
            assert hold is not None
            posted = await self.loyalty.resolve(conn, hold, post=True)
            assert posted.movement is not None  # held in this very transaction
            state = posted.movement.state
        if order.status == "placed":
            await announce(conn, "order.placed", order)
        return Created(state, order, response)

    async def _use_promo(
        self, conn: asyncpg.Connection, promo: Promo, order: contract.Order
    ) -> None:
        if await conn.fetchval(sql.USE_PROMO, promo.id, order.guest_id) is None:
            raise Problem(422, "promo-exhausted", f"promo code {promo.code} has been used up")
        await conn.execute(sql.INSERT_PROMO_REDEMPTION, promo.id, order.guest_id, order.id)


def _at_every_tier(
    program: Program, drafted: contract.Order, priced: Quote
) -> list[contract.Order]:
    """What the order earns depends on the guest's tier, which place_order reads: the order is
    rendered for every tier (lowest first) and the database stores the right one."""
    paid = [(line.paid_minor, line.earns_points) for line in priced.lines]
    return [
        msgspec.structs.replace(drafted, points_to_earn=sum(split_earning(program, t, paid)))
        for t in program.tiers
    ]

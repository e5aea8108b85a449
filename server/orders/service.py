"""Order use cases: checkout, payment, status changes, cancellation, line refunds, expiry.

Checkout is the hot path: the menu comes from the cache, Redis admits the spend (one call, two
on a disagreement), and everything else is one PostgreSQL transaction with no query per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from server.catalog.model import (
    BOOKING_HORIZON,
    LocationInfo,
    MenuIndex,
    is_open,
    slot_runs_rest_of_day,
    slot_start,
)
from server.catalog.service import Catalog
from server.guests.model import display_name
from server.infra import idempotency
from server.infra.audit import audit
from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import Principal
from server.infra.problems import Problem, database_busy
from server.loyalty.model import AccountState, Movement, Program
from server.loyalty.service import Loyalty, insufficient_points
from server.orders import sql
from server.orders.model import (
    CANCELLABLE_BY_GUEST,
    CANCELLABLE_BY_STAFF,
    STAFF_TRANSITIONS,
    Promo,
    Quote,
    discount_for,
    draft_order,
    price_lines,
    quote,
    split_earning,
)
from server.settings import Settings
from shared import contract

__all__ = ["Orders", "order_from_rows"]

log = logging.getLogger("regulars.orders")
_encode = msgspec.json.Encoder().encode
# Transfer ids of spends derive from the idempotency key, so a retried checkout reserves the
# same hold in Redis (an 'exists', not a second hold).
_SPEND_NAMESPACE = uuid.UUID("6f1c1d3e-3f7a-4c35-9a43-2f0b8f2b1e01")
# The routes whose requests are idempotent, as their hash names them (one source each).
ORDERS_ROUTE = "POST /v1/orders"
PAYMENTS_ROUTE = "POST /v1/orders/{order_id}/payments"
REFUNDS_ROUTE = "POST /v1/orders/{order_id}/refunds"


def order_from_rows(
    order: Mapping[str, Any] | asyncpg.Record, lines: list[asyncpg.Record]
) -> contract.Order:
    return contract.Order(
        id=order["id"],
        status=order["status"],
        location_id=order["location_id"],
        guest_id=order["guest_id"],
        currency=order["currency"],
        subtotal_minor=order["subtotal_minor"],
        discount_minor=order["discount_minor"],
        points_spent=order["points_spent"],
        points_value_minor=order["points_value_minor"],
        amount_due_minor=order["amount_due_minor"],
        points_to_earn=order["points_to_earn"],
        points_earned=order["points_earned"],
        pickup_at=order["pickup_at"],
        created_at=order["created_at"],
        payment_expires_at=order["payment_expires_at"],
        lines=[
            contract.OrderLine(
                id=ln["id"],
                item_id=ln["item_id"],
                sku=ln["sku"],
                name=ln["name"],
                quantity=ln["quantity"],
                unit_price_minor=ln["unit_price_minor"],
                modifiers=list(ln["modifier_names"]),
                gross_minor=ln["gross_minor"],
                discount_minor=ln["discount_minor"],
                points_spent=ln["points_spent"],
                paid_minor=ln["paid_minor"],
                points_earned=ln["points_earned"],
                refunded=ln["refunded"],
            )
            for ln in lines
        ],
    )


class Orders:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        loyalty: Loyalty,
        on_completed: Callable[[asyncpg.Connection, UUID], Awaitable[None]],
    ) -> None:
        """``on_completed`` runs in the transaction that completes an order (the guest profile
        update, wired by the composition root so orders need not import the kiosk domain)."""
        self.on_completed = on_completed
        self.settings = settings
        self.db = db
        self.catalog = catalog
        self.loyalty = loyalty
        self._promos = SingleFlightCache(self._load_promos, settings.menu_cache_ttl_s, "promo")
        self._in_flight = asyncio.Semaphore(settings.checkouts_in_flight)

    # -- checkout ------------------------------------------------------------------------

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
        pickup_at, slots = self._pickup(index, body.pickup_at, now)
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
                guest, index, program, priced, promo, transfer_id, (pickup_at, slots), now,
                request, asap=body.pickup_at is None,
            )  # fmt: skip
            if isinstance(created, Stored):
                return created
            state, order, response = created
            # Only now: the writes have committed (place_order is one statement, or the
            # transaction around it has ended).
            spend.committed(state, posted=order.status == "placed" and points > 0)
        return Stored(201, response)

    def _pickup(
        self, index: MenuIndex, asked: datetime | None, now: datetime
    ) -> tuple[datetime, list[tuple[datetime, datetime]]]:
        """The pickup time and its candidate slots as runs of (first, last) slot starts: the
        asked time's slot, or (none asked) every open slot left in the location's day, of
        which place_order takes the earliest with room."""
        location = index.location
        if asked is None:
            runs = slot_runs_rest_of_day(location, now)
            if not runs:
                raise Problem(
                    422, "location-closed", f"{location.name} is closed for the rest of today"
                )
            return runs[0][0], runs
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
        return pickup, [(slot, slot)]

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
        pickup: tuple[datetime, list[tuple[datetime, datetime]]],
        now: datetime,
        request: IdempotentRequest,
        asap: bool = False,
    ) -> Stored | tuple[AccountState | None, contract.Order, bytes]:
        """The checkout's writes: the key, the hold, the order with its lines, the slot and the
        stored response in one call of ``place_order`` (one round trip, no BEGIN/COMMIT). A
        promo code, or an order paid in full, adds statements after it in one transaction.
        Returns the stored response when the key was used before; refusals raise Problem and
        leave nothing written. ``asap``: the order goes to the earliest of the candidate slots
        with room, rendered here with the first and named right by place_order."""
        pickup_at, slots = pickup
        window = timedelta(seconds=self.settings.payment_window_s)
        drafted = draft_order(uuid.uuid4(), guest.subject_id, index, priced, pickup_at, now, window)
        # What the order earns depends on the guest's tier, which place_order reads: the order
        # and its response are rendered for every tier and the database stores the right one.
        paid = [(line.paid_minor, line.earns_points) for line in priced.lines]
        variants = [
            msgspec.structs.replace(drafted, points_to_earn=sum(split_earning(program, t, paid)))
            for t in program.tiers
        ]
        responses = [_encode(v) for v in variants]
        adds_statements = promo is not None or drafted.status == "placed"
        async with self.db.connection() as conn:
            redeemed = (
                await self.loyalty.redeemed_account(conn, guest.brand_id)
                if priced.points_spent
                else None
            )
            async with conn.transaction() if adds_statements else contextlib.nullcontext():
                row = await self._place_order(
                    conn, guest, drafted, priced, promo, transfer_id, redeemed, now + window,
                    (slots, index.location, asap), request,
                    [t.min_points for t in program.tiers], variants, responses,
                )  # fmt: skip
                if not row["claimed"]:
                    return await idempotency.stored(
                        conn, request.scope, request.key, request.digest
                    )
                order, response = variants[row["tier"] - 1], responses[row["tier"] - 1]
                if asap and row["chosen_slot"] != order.pickup_at:  # a later slot had room
                    order = msgspec.structs.replace(order, pickup_at=row["chosen_slot"])
                    response = _encode(order)
                state = None if row["version"] is None else AccountState(
                    posted=row["posted"], pending=row["pending"], version=row["version"]
                )  # fmt: skip
                if promo is not None:
                    await self._use_promo(conn, promo, order)
                if order.status == "placed" and state is not None:
                    hold = await self.loyalty.hold_of(conn, transfer_id)
                    assert hold is not None
                    posted = await self.loyalty.resolve(conn, hold, post=True)
                    assert posted.movement is not None  # held in this very transaction
                    state = posted.movement.state
                if order.status == "placed":
                    await self._announce(conn, "order.placed", order)
        return state, order, response

    async def _place_order(
        self,
        conn: asyncpg.Connection,
        guest: Principal,
        order: contract.Order,
        priced: Quote,
        promo: Promo | None,
        transfer_id: UUID,
        redeemed_account_id: UUID | None,
        hold_timeout: datetime,
        slots: tuple[list[tuple[datetime, datetime]], LocationInfo, bool],
        request: IdempotentRequest,
        tier_floors: list[int],
        variants: list[contract.Order],
        responses: list[bytes],
    ) -> asyncpg.Record:
        """Call place_order (migrations 0009, 0012) and turn its refusals into problems.
        ``slots``: the candidate slots (runs of first and last start) at the location, and
        whether the order goes to the earliest with room (as soon as possible) or to the one
        asked."""
        runs, location, asap = slots
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
        try:
            row = await conn.fetchrow(
                sql.PLACE_ORDER, request.scope, request.key, request.digest, guest.subject_id, tier_floors,
                [v.points_to_earn for v in variants], responses, order.points_spent, transfer_id,
                redeemed_account_id, hold_timeout, order.id, guest.brand_id, order.location_id,
                order.status, order.currency, order.subtotal_minor, order.discount_minor,
                order.points_value_minor, order.amount_due_minor, promo.id if promo else None,
                None if asap else order.pickup_at, order.payment_expires_at, order.created_at,
                lines, [first for first, _ in runs], [last for _, last in runs],
                location.slot_minutes, location.orders_per_slot,
            )  # fmt: skip
        except asyncpg.RaiseError as refused:
            if refused.message == "insufficient-points":
                spendable = int(refused.detail) if refused.detail else None
                raise insufficient_points(order.points_spent, spendable) from None
            if refused.message == "slot-full":
                raise Problem(
                    409,
                    "slot-full",
                    f"the pickup slot at {runs[0][0].isoformat()} is full; choose another",
                ) from None
            raise
        assert row is not None
        return row

    async def _use_promo(
        self, conn: asyncpg.Connection, promo: Promo, order: contract.Order
    ) -> None:
        if await conn.fetchval(sql.USE_PROMO, promo.id, order.guest_id) is None:
            raise Problem(422, "promo-exhausted", f"promo code {promo.code} has been used up")
        await conn.execute(sql.INSERT_PROMO_REDEMPTION, promo.id, order.guest_id, order.id)

    # -- reading -------------------------------------------------------------------------

    async def get(self, principal: Principal, order_id: UUID) -> contract.Order:
        async with self.db.connection() as conn:
            order = await self._visible(conn, principal, order_id, lock=False)
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

    async def _visible(
        self, conn: asyncpg.Connection, principal: Principal, order_id: UUID, *, lock: bool
    ) -> asyncpg.Record:
        """The order if this principal may see it; 404 otherwise (no id probing)."""
        order = await conn.fetchrow(sql.ORDER_FOR_UPDATE if lock else sql.ORDER, order_id)
        allowed = order is not None and (
            (principal.kind == "guest" and order["guest_id"] == principal.subject_id)
            or (
                principal.kind == "staff"
                and order["brand_id"] == principal.brand_id
                and principal.covers(order["location_id"])
            )
        )
        if not allowed:
            raise Problem(404, "order-not-found", f"no order {order_id}")
        assert order is not None
        return order

    # -- payment -------------------------------------------------------------------------

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
            order = await self._visible(conn, guest, order_id, lock=True)
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
                await self._announce(conn, "order.placed", placed)
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

    # -- status --------------------------------------------------------------------------

    async def change_status(self, staff: Principal, order_id: UUID, target: str) -> contract.Order:
        """Move an order one step forward; completion earns the points (DESIGN §5)."""
        if target == "cancelled":
            return await self.cancel(staff, order_id)
        earned: Movement | None = None
        async with self.db.transaction() as conn:
            order = await self._visible(conn, staff, order_id, lock=True)
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
            await self._announce(conn, "order.status", updated)
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
        account_id = await conn.fetchval(sql.GUEST_ACCOUNT_ID, order["guest_id"])
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
            order = await self._visible(conn, principal, order_id, lock=True)
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
            await self._announce(conn, "order.status", updated)
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

    # -- refunds -------------------------------------------------------------------------

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
            order = await self._visible(conn, staff, order_id, lock=True)
            if order["status"] not in ("completed", "refunded"):
                raise Problem(
                    409,
                    "not-refundable",
                    f"only completed orders are refunded; this one is {order['status']}",
                )
            rows = await conn.fetch(sql.LINES_FOR_REFUND, order_id, body.line_ids)
            if len(rows) != len(set(body.line_ids)):
                raise Problem(404, "line-not-found", "one of line_ids is not a line of this order")
            mirrors = await self._refund_rows(conn, order, rows)
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
    ) -> list[Movement]:
        account_id = await conn.fetchval(sql.GUEST_ACCOUNT_ID, order["guest_id"])
        moved: list[Movement] = []
        for row in rows:
            if row["refunded"]:
                continue
            refund = (row["id"], row["paid_minor"], row["points_spent"], row["points_earned"])
            if await conn.fetchval(sql.INSERT_REFUND, *refund) is None:
                continue  # a concurrent refund of this line won
            await conn.execute(sql.MARK_LINE_REFUNDED, row["id"])
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
        return moved

    # -- jobs ----------------------------------------------------------------------------

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

    async def _announce(self, conn: asyncpg.Connection, topic: str, order: contract.Order) -> None:
        name = await conn.fetchrow(sql.GUEST_NAME, order.guest_id)
        # Queues are read by every barista: the masked name, never the full one.
        display = display_name(name["first_name"], name["last_name"], full=False) if name else None
        payload = msgspec.to_builtins(msgspec.structs.replace(order, guest_display_name=display))
        await conn.execute(sql.INSERT_OUTBOX, topic, {"event": topic, "order": payload})

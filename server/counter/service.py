"""The guest card: scan a guest (rotating QR, card number or phone) and enrol at the counter.

The scan is the hot path (≤ 10 ms at demo size): a Redis rate-limit counter, one query for the
guest with account and profile, one for open pre-orders by partial index, one Redis read of
the hot wallet. No order history: ``guest_profiles`` is kept current by
:func:`server.counter.profiles.record_visit` as accruals land and orders complete. Points at the
counter are in ``counter.py``, the live queue in ``live.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import msgspec

from server.catalog.locations import Locations
from server.counter import sql
from server.counter.model import (
    CodeKind,
    classify_code,
    habits_of,
    require_scan_time,
    sees_full_profile,
    usual_items,
)
from server.guests.model import display_name
from server.guests.service import Guests, normalise_phone
from server.infra import idempotency
from server.infra.audit import audit
from server.infra.db import Database
from server.infra.idempotency import IdempotentRequest, Stored
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.ratelimit import limit
from server.infra.redis import RedisGate
from server.loyalty.model import tier_for
from server.loyalty.service import Loyalty
from server.offers.model import OfferFacts, OfferRules, SimpleOfferRules
from server.orders.service import order_from_rows
from server.orders.sql import LINES_OF_ORDERS
from server.settings import Settings
from shared import contract, qr

__all__ = ["CounterDesk"]

_encode = msgspec.json.Encoder().encode
ENROL_ROUTE = "POST /v1/kiosk/guests"


class CounterDesk:
    """What staff do at the counter besides moving points: scan, enrol, the queue."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        gate: RedisGate,
        loyalty: Loyalty,
        guests: Guests,
        locations: Locations,
        offers: OfferRules | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.loyalty = loyalty
        self.guests = guests
        self.locations = locations
        self.offers: OfferRules = offers or SimpleOfferRules()

    async def scan(self, staff: Principal, body: contract.ScanIn) -> contract.GuestCard:
        """The guest behind a QR code, card number or phone, as one card.

        Refuses 422 ``unrecognised-code``, ``qr-expired``, ``qr-forged``,
        ``invalid-scan-time``; 404 ``guest-not-found`` (also for another brand's guest);
        429 ``too-many-scans`` over ``scans_per_minute``.
        """
        now = datetime.now(UTC)
        await limit(
            self.gate,
            "scans",
            staff.subject_id,
            self.settings.scans_per_minute,
            60,
            "scans this minute",
        )
        require_scan_time(
            body.scanned_at,
            now,
            self.settings.scan_replay_max_age_s,
            self.settings.scan_clock_skew_s,
        )
        # Before the connection: the locations cache reads the database with its own.
        local_now = now.astimezone(await self.locations.home_tz(staff))
        async with self.db.connection() as conn:
            row, via = await self._find(conn, staff, body.code, body.scanned_at or now)
            card = await self._card(conn, staff, row, local_now)
            await audit(conn, staff, _view_action(staff), row["id"], {"via": via})
        return card

    async def _find(
        self, conn: asyncpg.Connection, staff: Principal, code: str, at: datetime
    ) -> tuple[asyncpg.Record, str]:
        kind = classify_code(code)
        if kind is None:
            raise _unrecognised()
        what, text = kind
        if what == "qr":
            try:
                scanned = qr.parse(text)
            except qr.QrError:
                raise _unrecognised() from None
            row = await conn.fetchrow(sql.CARD_BY_PUBLIC_ID, scanned.public_id)
            _same_brand(row, staff)
            assert row is not None
            try:
                qr.verify(
                    scanned,
                    bytes(row["qr_secret"]),
                    now_s=at.timestamp(),
                    step_s=self.settings.qr_step_s,
                    valid_steps=self.settings.qr_valid_steps,
                )
            except qr.QrError as exc:
                if exc.reason == "expired":
                    raise Problem(422, "qr-expired", str(exc)) from None
                raise Problem(422, "qr-forged", str(exc)) from None
        else:
            row = None
            if what == "card":
                row = await conn.fetchrow(sql.CARD_BY_CARD_NUMBER, text)
            # Twelve digits may also be a national phone number (0152 1234 5678).
            if row is None:
                row, what = await self._by_phone(conn, staff, text, typed_card=what == "card")
        _same_brand(row, staff)
        assert row is not None
        return row, what

    async def _by_phone(
        self, conn: asyncpg.Connection, staff: Principal, text: str, *, typed_card: bool
    ) -> tuple[asyncpg.Record | None, CodeKind]:
        try:
            phone = normalise_phone(text)
        except Problem:
            if typed_card:
                return None, "card"
            raise _unrecognised() from None
        return await conn.fetchrow(sql.CARD_BY_PHONE, staff.brand_id, phone), "phone"

    async def _card(
        self, conn: asyncpg.Connection, staff: Principal, row: asyncpg.Record, local_now: datetime
    ) -> contract.GuestCard:
        """The card of the guest in ``row``; ``local_now`` is now in the counter's timezone."""
        program = await self.loyalty.programs.get(staff.brand_id, conn)
        current, following = tier_for(program, row["points_earned_12m"] or 0)
        to_next = following.min_points - (row["points_earned_12m"] or 0) if following else None
        posted, pending = row["posted"] or 0, row["pending"] or 0
        hot = await self.loyalty.mirrored(row["id"])
        if hot is not None:
            posted, pending = hot.posted, hot.pending
        locations = sorted(staff.location_ids) or None
        orders = await conn.fetch(
            sql.OPEN_ORDERS_OF_GUEST, row["id"], locations, self.settings.open_orders_per_card
        )
        lines = await conn.fetch(LINES_OF_ORDERS, [o["id"] for o in orders]) if orders else []
        usual = usual_items(row["top_items"] or [])
        profile = row if row["visits_total"] is not None else None
        habits = habits_of(profile, local_now)
        full = sees_full_profile(staff.role)
        facts = OfferFacts(
            spendable=posted - pending,
            point_value_minor=program.point_value_minor,
            local_now=local_now,
            usual=usual,
            next_tier=following.name if following else None,
            points_to_next_tier=to_next,
            visits_total=habits.visits_total,
            last_visit_at=habits.last_visit_at,
            usual_hour=row["usual_hour"],
        )
        return contract.GuestCard(
            guest=contract.GuestSummary(
                id=row["id"],
                display_name=display_name(row["first_name"], row["last_name"], full=full),
                tier=current.name,
                points_to_next_tier=to_next,
                next_tier=following.name if following else None,
                member_since=row["created_at"].date(),
                phone=row["phone_e164"] if full else None,
                email=row["email"] if full else None,
            ),
            wallet=contract.Wallet(
                points_available=posted - pending,
                points_pending=pending,
                tier=current.name,
                next_tier=following.name if following else None,
                points_to_next_tier=to_next,
                point_value_minor=program.point_value_minor,
            ),
            usual=usual,
            habits=habits,
            offers=self.offers.offers_for(facts),
            open_orders=_orders(orders, lines),
        )

    async def enrol(self, staff: Principal, body: contract.EnrolIn, key: str) -> Stored:
        """Enrol a guest by phone at the counter (welcome bonus included) and answer their
        card: 201 for a new guest, 200 when the phone was already a guest's."""
        phone = normalise_phone(body.phone)
        request = IdempotentRequest.of(
            f"staff:{staff.subject_id}:enrolments", key, ENROL_ROUTE, body
        )
        now = datetime.now(UTC)
        local_now = now.astimezone(await self.locations.home_tz(staff))
        async with self.db.transaction() as conn:
            replay = await idempotency.begin_request(conn, request)
            if replay is not None:
                return replay
            guest_id, created, welcome = await self.guests.enrol(
                conn, staff.brand_id, phone, (body.first_name or "").strip()
            )
            row = await conn.fetchrow(sql.CARD_BY_ID, guest_id)
            _same_brand(row, staff)
            assert row is not None
            card = await self._card(conn, staff, row, local_now)
            action = "guest.enrol" if created else _view_action(staff)
            await audit(conn, staff, action, guest_id, {"via": "enrol", "created": created})
            stored = Stored(201 if created else 200, _encode(card))
            await idempotency.finish_request(conn, request, stored)
        await self.loyalty.mirror_all([welcome])
        return stored

    async def queue(self, staff: Principal, location_id: UUID) -> list[contract.Order]:
        """The location's open pre-orders (placed … ready), soonest pickup first."""
        await self.locations.of_staff(staff, location_id)
        async with self.db.connection() as conn:
            orders = await conn.fetch(sql.QUEUE, location_id, self.settings.page_size_max)
            lines = await conn.fetch(LINES_OF_ORDERS, [o["id"] for o in orders]) if orders else []
        return _orders(orders, lines)


def _orders(orders: list[asyncpg.Record], lines: list[asyncpg.Record]) -> list[contract.Order]:
    by_order: dict[UUID, list[asyncpg.Record]] = {}
    for line in lines:
        by_order.setdefault(line["order_id"], []).append(line)
    result = []
    for order in orders:
        built = order_from_rows(dict(order), by_order.get(order["id"], []))
        if "first_name" in order:
            name = display_name(order["first_name"], order["last_name"], full=False)
            built = msgspec.structs.replace(built, guest_display_name=name)
        result.append(built)
    return result


def _view_action(staff: Principal) -> str:
    return "guest.view_full" if sees_full_profile(staff.role) else "guest.scan"


def _same_brand(row: asyncpg.Record | None, staff: Principal) -> None:
    if row is None or row["brand_id"] != staff.brand_id:
        raise Problem(404, "guest-not-found", "no guest of this brand has that code")


def _unrecognised() -> Problem:
    return Problem(
        422,
        "unrecognised-code",
        "not a guest QR code, a 12-digit card number or a phone number",
    )

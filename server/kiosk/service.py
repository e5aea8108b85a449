"""The counter's use cases: scan a guest into a card, enrol at the counter, accrue points for
a till receipt, two-phase redemptions, and the live pre-order queue of a location.

The scan is the hot path (≤ 10 ms at demo size): a Redis rate-limit counter, one query for the
guest with account and profile, one for open pre-orders by partial index, one Redis read of
the hot wallet. No order history: ``guest_profiles`` is kept current by :func:`record_visit`
as accruals land and orders complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import msgspec

from server.auth.tokens import Principal
from server.guests.service import Guests, normalise_phone
from server.infra import idempotency
from server.infra.db import Database
from server.infra.idempotency import Stored
from server.infra.problems import Problem
from server.infra.ratelimit import limit
from server.infra.redis import RedisGate, RedisUnavailable
from server.kiosk import sql
from server.kiosk.model import (
    RECENT_VISITS_MAX,
    CodeKind,
    Profile,
    Visit,
    VisitItem,
    classify_code,
    display_name,
    fold_visit,
    habits_of,
    histogram_from,
    scan_time_problem,
    sees_full_profile,
    usual_items,
)
from server.loyalty.model import earn_points, tier_for
from server.loyalty.repository import AccountState
from server.loyalty.service import Admission, Loyalty, add_months
from server.offers.model import OfferFacts, OfferRules, SimpleOfferRules
from server.orders.service import order_from_rows
from server.orders.sql import LINES_OF_ORDERS
from server.settings import Settings
from server.staff.service import audit
from shared import contract, qr

__all__ = [
    "QUEUE_CHANNEL_PATTERN",
    "Counter",
    "Kiosk",
    "LiveQueues",
    "Locations",
    "queue_hello",
    "record_completed_order",
    "record_visit",
]

log = logging.getLogger("regulars.kiosk")
_encode = msgspec.json.Encoder().encode
# Redemption transfer ids derive from the Idempotency-Key, so a retry reserves the same hold.
_REDEMPTION_NAMESPACE = uuid.UUID("b1d0c8f4-5a3e-4e0b-8f57-3c2a9e7d6a10")
# A counter redemption not posted within this time is voided by the worker.
QUEUE_CHANNEL_PATTERN = "rg:queue:*"
_QUEUE_PREFIX = "rg:queue:"


# -- locations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    id: UUID
    brand_id: UUID
    name: str
    tz: ZoneInfo


class Locations:
    """Every location's brand, name and timezone, cached briefly (they rarely change)."""

    # A location created a moment ago is found after at most this long, without letting
    # lookups of unknown ids query the database every time.
    MISS_REFRESH_S = 1.0

    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._ttl_s = ttl_s
        self._places: dict[UUID, Place] = {}
        self._loaded_at = -float("inf")

    async def _all(self, missing: UUID | None = None) -> dict[UUID, Place]:
        age_s = time.monotonic() - self._loaded_at
        missed = missing is not None and missing not in self._places
        if age_s > self._ttl_s or (missed and age_s > self.MISS_REFRESH_S):
            rows = await self._db.fetch(sql.LOCATIONS)
            self._places = {
                r["id"]: Place(r["id"], r["brand_id"], r["name"], ZoneInfo(r["timezone"]))
                for r in rows
            }
            self._loaded_at = time.monotonic()
        return self._places

    async def get(self, location_id: UUID) -> Place | None:
        return (await self._all(location_id)).get(location_id)

    async def of_staff(self, staff: Principal, location_id: UUID) -> Place:
        """The location if ``staff`` works there; 404 otherwise (no probing other brands)."""
        place = await self.get(location_id)
        if place is None or place.brand_id != staff.brand_id or not staff.covers(location_id):
            raise Problem(404, "location-not-found", f"no location {location_id}")
        return place

    async def home_tz(self, staff: Principal) -> ZoneInfo:
        """The timezone the counter is in: the staff's (first) location, else the brand's."""
        for location_id in sorted(staff.location_ids):
            place = await self.get(location_id)
            if place is not None:
                return place.tz
        brand = sorted(
            (p for p in (await self._all()).values() if p.brand_id == staff.brand_id),
            key=lambda p: p.name,
        )
        return brand[0].tz if brand else ZoneInfo("UTC")


# -- guest profiles -------------------------------------------------------------------------


async def record_visit(
    conn: asyncpg.Connection,
    guest_id: UUID,
    visit: Visit,
    now: datetime,
    tz: ZoneInfo,
    exclude_order_id: UUID | None = None,
) -> None:
    """Fold one visit into the guest's ``guest_profiles`` row, in the caller's transaction.

    The first time a row is folded forward, its histograms are started from the guest's
    completed orders (bounded); after that only the new visit is read.
    """
    row = await conn.fetchrow(sql.PROFILE_FOR_UPDATE, guest_id)
    if row is None or row["weekday_counts"] is None:
        history = [
            r["created_at"]
            for r in await conn.fetch(
                sql.COMPLETED_VISITS, guest_id, exclude_order_id, RECENT_VISITS_MAX * 5
            )
        ]
        weekdays, hours = histogram_from(at.astimezone(tz) for at in history)
        recent = tuple(sorted(at for at in history if at > now - timedelta(days=30)))
    else:
        weekdays, hours = tuple(row["weekday_counts"]), tuple(row["hour_counts"])
        recent = tuple(row["recent_visits"] or ())
    profile = Profile(recent_visits=recent, weekday_counts=weekdays, hour_counts=hours)
    if row is not None:
        profile = Profile(
            visits_total=row["visits_total"],
            spend_total_minor=row["spend_total_minor"],
            avg_ticket_minor=row["avg_ticket_minor"],
            usual_weekday=row["usual_weekday"],
            usual_hour=row["usual_hour"],
            last_visit_at=row["last_visit_at"],
            top_items=tuple(row["top_items"]),
            points_earned_12m=row["points_earned_12m"],
            weekday_counts=weekdays,
            hour_counts=hours,
            recent_visits=recent,
        )
    folded = fold_visit(profile, visit, now)
    await conn.execute(
        sql.UPSERT_PROFILE,
        guest_id,
        folded.visits_total,
        folded.visits_30d,
        folded.spend_total_minor,
        folded.avg_ticket_minor,
        folded.usual_weekday,
        folded.usual_hour,
        folded.last_visit_at,
        list(folded.top_items),
        folded.points_earned_12m,
        list(folded.weekday_counts),
        list(folded.hour_counts),
        list(folded.recent_visits),
    )


async def record_completed_order(conn: asyncpg.Connection, order_id: UUID) -> None:
    """Fold a just-completed order into its guest's profile (call after the status is set,
    in the same transaction). Does nothing when the order is not completed."""
    row = await conn.fetchrow(sql.COMPLETED_ORDER, order_id)
    if row is None:
        return
    now = datetime.now(UTC)
    tz = ZoneInfo(row["timezone"])
    items = tuple(
        VisitItem(
            UUID(str(i["item_id"])), str(i["name"]), int(i["quantity"]), int(i["price_minor"])
        )
        for i in row["items"]
    )
    visit = Visit(
        at=now,
        local_at=now.astimezone(tz),
        amount_minor=int(row["paid_minor"]),
        points=row["points_earned"],
        items=items,
    )
    await record_visit(conn, row["guest_id"], visit, now, tz, exclude_order_id=order_id)


# -- the guest card -------------------------------------------------------------------------


class Kiosk:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        gate: RedisGate,
        loyalty: Loyalty,
        guests: Guests,
        offers: OfferRules | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.gate = gate
        self.loyalty = loyalty
        self.guests = guests
        self.locations = Locations(db, settings.menu_cache_ttl_s)
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
        problem = scan_time_problem(
            body.scanned_at,
            now,
            self.settings.scan_replay_max_age_s,
            self.settings.scan_clock_skew_s,
        )
        if problem is not None:
            raise Problem(422, "invalid-scan-time", problem)
        async with self.db.connection() as conn:
            row, via = await self._find(conn, staff, body.code, body.scanned_at or now)
            card = await self._card(conn, staff, row, now)
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
        self, conn: asyncpg.Connection, staff: Principal, row: asyncpg.Record, now: datetime
    ) -> contract.GuestCard:
        program = await self.loyalty.programs.get(staff.brand_id, conn)
        current, following = tier_for(program, row["points_earned_12m"] or 0)
        to_next = following.min_points - (row["points_earned_12m"] or 0) if following else None
        posted, pending = row["posted"] or 0, row["pending"] or 0
        try:
            hot = await self.loyalty.hot.read(row["id"])
            if hot is not None:
                posted, pending = hot[0].posted, hot[0].pending
        except RedisUnavailable:
            pass
        locations = sorted(staff.location_ids) or None
        orders = await conn.fetch(
            sql.OPEN_ORDERS_OF_GUEST, row["id"], locations, self.settings.open_orders_per_card
        )
        lines = await conn.fetch(LINES_OF_ORDERS, [o["id"] for o in orders]) if orders else []
        usual = usual_items(row["top_items"] or [])
        profile = row if row["visits_total"] is not None else None
        habits = habits_of(profile, now)
        full = sees_full_profile(staff.role)
        facts = OfferFacts(
            spendable=posted - pending,
            point_value_minor=program.point_value_minor,
            local_now=now.astimezone(await self.locations.home_tz(staff)),
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
        scope = f"staff:{staff.subject_id}:enrolments"
        digest = idempotency.request_hash("POST /v1/kiosk/guests", body)
        now = datetime.now(UTC)
        async with self.db.transaction() as conn:
            replay = await idempotency.begin(conn, scope, key, digest)
            if replay is not None:
                return replay
            guest_id, created, welcome = await self.guests.enrol(
                conn, staff.brand_id, phone, (body.first_name or "").strip()
            )
            row = await conn.fetchrow(sql.CARD_BY_ID, guest_id)
            _same_brand(row, staff)
            assert row is not None
            card = await self._card(conn, staff, row, now)
            action = "guest.enrol" if created else _view_action(staff)
            await audit(conn, staff, action, guest_id, {"via": "enrol", "created": created})
            stored = Stored(201 if created else 200, _encode(card))
            await idempotency.finish(conn, scope, key, stored.status_code, stored.body)
        if welcome is not None:
            await self.loyalty.mirror(guest_id, "credit", welcome[0], welcome[1], welcome[2])
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


def _insufficient(wanted: int, spendable: int | None) -> Problem:
    return Problem(
        422,
        "insufficient-points",
        f"the guest has {spendable if spendable is not None else 'fewer'} spendable points, "
        f"{wanted} were asked",
        points_available=spendable,
    )


# -- points at the counter ------------------------------------------------------------------


class Counter:
    """Counter accruals and two-phase redemptions; Redis is mirrored after each commit."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        gate: RedisGate,
        loyalty: Loyalty,
        locations: Locations,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.db = db
        self.loyalty = loyalty
        self.locations = locations

    async def accrue(
        self, staff: Principal, guest_id: UUID, body: contract.AccrualIn, key: str
    ) -> Stored:
        """Credit the points a till receipt earns, once per key and once per receipt.

        Refuses 404 for a location or guest the staff may not touch, 409
        ``receipt-already-accrued`` for a receipt already accrued at this location.
        """
        scope = f"staff:{staff.subject_id}:accruals"
        digest = idempotency.request_hash(f"POST /v1/guests/{guest_id}/accruals", body)
        now = datetime.now(UTC)
        problem = scan_time_problem(
            body.scanned_at,
            now,
            self.settings.scan_replay_max_age_s,
            self.settings.scan_clock_skew_s,
        )
        if problem is not None:
            raise Problem(422, "invalid-scan-time", problem)
        place = await self.locations.of_staff(staff, body.location_id)
        state: AccountState | None = None
        async with self.db.transaction() as conn:
            replay = await idempotency.begin(conn, scope, key, digest)
            if replay is not None:
                return replay
            guest = await conn.fetchrow(sql.GUEST_ACCOUNT, guest_id)
            if guest is None or guest["brand_id"] != staff.brand_id:
                raise Problem(404, "guest-not-found", f"no guest {guest_id}")
            program = await self.loyalty.programs.get(staff.brand_id, conn)
            tier, _, _ = await self.loyalty.tier(conn, program, guest["account_id"])
            points = earn_points(program, body.amount_paid_minor, tier)
            transfer_id = uuid.uuid4()
            claimed = await conn.fetchval(
                sql.CLAIM_RECEIPT,
                body.location_id,
                body.receipt_ref,
                staff.brand_id,
                guest_id,
                transfer_id if points else None,
                body.amount_paid_minor,
                points,
                staff.subject_id,
                staff.device_id,
                body.scanned_at,
            )
            if claimed is None:
                raise Problem(
                    409,
                    "receipt-already-accrued",
                    f"receipt {body.receipt_ref!r} was already accrued at this location",
                )
            if points:
                state = await self.loyalty.ledger.credit(
                    conn,
                    transfer_id=transfer_id,
                    brand_id=staff.brand_id,
                    account_id=guest["account_id"],
                    points=points,
                    code="accrual",
                    source="issued",
                    location_id=body.location_id,
                    expires_at=add_months(now, program.lot_expiry_months),
                )
            at = body.scanned_at or now
            visit = Visit(
                at=at,
                local_at=at.astimezone(place.tz),
                amount_minor=body.amount_paid_minor,
                points=points,
            )
            await record_visit(conn, guest_id, visit, now, place.tz)
            await audit(
                conn,
                staff,
                "points.accrue",
                guest_id,
                {
                    "points": points,
                    "amount_paid_minor": body.amount_paid_minor,
                    "location_id": str(body.location_id),
                    "receipt_ref": body.receipt_ref,
                },
            )
            available = state.spendable if state else await conn.fetchval(sql.SPENDABLE, guest_id)
            transfer = contract.Transfer(
                id=transfer_id,
                guest_id=guest_id,
                code="accrual",
                points=points,
                state="posted",
                created_at=now,
                points_available=available,
            )
            stored = Stored(201, _encode(transfer))
            await idempotency.finish(conn, scope, key, 201, stored.body)
        if state is not None:
            await self.loyalty.mirror(guest_id, "credit", transfer_id, state, points)
        return stored

    async def reserve(
        self, staff: Principal, guest_id: UUID, body: contract.RedemptionIn, key: str
    ) -> Stored:
        """Hold points for a redemption (pending, voided after ``redemption_timeout_s``).

        Redis admits first (a fast refusal), PostgreSQL's guarded hold is the last word.
        Refuses 422 ``insufficient-points`` (also while the balance is negative).
        """
        scope = f"staff:{staff.subject_id}:redemptions"
        digest = idempotency.request_hash(f"POST /v1/guests/{guest_id}/redemptions", body)
        await limit(
            self.gate,
            "redemptions",
            staff.subject_id,
            self.settings.redemptions_per_minute,
            60,
            "redemptions this minute",
        )
        await self.locations.of_staff(staff, body.location_id)
        guest = await self.db.fetchrow(sql.GUEST_ACCOUNT, guest_id)
        if guest is None or guest["brand_id"] != staff.brand_id:
            raise Problem(404, "guest-not-found", f"no guest {guest_id}")
        transfer_id = uuid.uuid5(_REDEMPTION_NAMESPACE, f"{scope}:{key}")
        admission = await self.loyalty.admit(guest_id, transfer_id, body.points)
        if admission.status == "insufficient":
            async with self.db.connection() as conn:
                replay = await idempotency.lookup(conn, scope, key, digest)
            if replay is not None:
                return replay
            raise _insufficient(body.points, admission.spendable)
        return await self._hold(
            staff, guest, guest_id, body, (scope, key, digest), transfer_id, admission
        )

    async def _hold(
        self,
        staff: Principal,
        guest: asyncpg.Record,
        guest_id: UUID,
        body: contract.RedemptionIn,
        request: tuple[str, str, bytes],
        transfer_id: UUID,
        admission: Admission,
    ) -> Stored:
        scope, key, digest = request
        now = datetime.now(UTC)
        # Set only once the transaction has committed, so any failure up to and including the
        # commit voids the Redis hold this request made.
        state: AccountState | None = None
        try:
            async with self.db.transaction() as conn:
                replay = await idempotency.begin(conn, scope, key, digest)
                if replay is not None:
                    return replay
                held = await self.loyalty.ledger.hold(
                    conn,
                    transfer_id=transfer_id,
                    brand_id=staff.brand_id,
                    account_id=guest["account_id"],
                    points=body.points,
                    code="redemption",
                    location_id=body.location_id,
                    timeout_at=now + timedelta(seconds=self.settings.redemption_timeout_s),
                )
                if held is None:
                    raise _insufficient(body.points, await conn.fetchval(sql.SPENDABLE, guest_id))
                await audit(
                    conn,
                    staff,
                    "points.redeem.reserve",
                    guest_id,
                    {
                        "transfer_id": str(transfer_id),
                        "points": body.points,
                        "location_id": str(body.location_id),
                    },
                )
                transfer = contract.Transfer(
                    id=transfer_id,
                    guest_id=guest_id,
                    code="redemption",
                    points=-body.points,
                    state="pending",
                    created_at=now,
                    points_available=held.spendable,
                )
                stored = Stored(201, _encode(transfer))
                await idempotency.finish(conn, scope, key, 201, stored.body)
            state = held
        finally:
            await self.loyalty.settle_admission(guest_id, transfer_id, admission, state)
        return stored

    async def resolve(
        self, staff: Principal, transfer_id: UUID, *, post: bool
    ) -> contract.Transfer:
        """Post or void a held redemption exactly once.

        Asking again for what already happened answers the same final state; asking for the
        other is 409 ``already-posted`` / ``already-voided``. A hold past its timeout is voided
        and posting it is 409 ``redemption-expired``.
        """
        wanted = "post_pending" if post else "void_pending"
        ledger = self.loyalty.ledger
        now = datetime.now(UTC)
        state: AccountState | None = None
        expired = False
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(sql.REDEMPTION, transfer_id)
            if (
                row is None
                or row["code"] != "redemption"
                or row["brand_id"] != staff.brand_id
                or row["location_id"] is None
                or not staff.covers(row["location_id"])
            ):
                raise Problem(404, "redemption-not-found", f"no redemption {transfer_id}")
            resolution = row["resolution"]
            if resolution is None:
                expired = post and row["timeout_at"] is not None and row["timeout_at"] < now
                hold = await ledger.pending(conn, transfer_id)
                assert hold is not None
                state = await ledger.resolve(conn, hold, post=post and not expired)
                if state is None:  # a concurrent request resolved it first
                    row = await conn.fetchrow(sql.REDEMPTION, transfer_id)
                    assert row is not None
                    resolution = row["resolution"]
                else:
                    resolution = "void_pending" if expired else wanted
                    await audit(
                        conn,
                        staff,
                        f"points.redeem.{'void' if expired else wanted[:4]}",
                        row["guest_id"],
                        {"transfer_id": str(transfer_id), "points": row["amount"]},
                    )
            available = await conn.fetchval(sql.SPENDABLE, row["guest_id"])
        if state is not None:
            op: Literal["post", "void"] = "post" if resolution == "post_pending" else "void"
            await self.loyalty.mirror(row["guest_id"], op, transfer_id, state)
        if expired:
            raise Problem(409, "redemption-expired", "the hold timed out and was released")
        if resolution != wanted:
            slug = "already-voided" if resolution == "void_pending" else "already-posted"
            raise Problem(409, slug, f"this redemption was already {slug.split('-')[1]}")
        return contract.Transfer(
            id=transfer_id,
            guest_id=row["guest_id"],
            code="redemption",
            points=-row["amount"],
            state="posted" if post else "voided",
            created_at=row["resolved_at"] or now,
            points_available=available,
        )


# -- the live queue -------------------------------------------------------------------------


class LiveQueues:
    """One Redis pub/sub subscription per process, fanned out to the WebSockets of each
    location. The worker's outbox relay publishes; any API process may hold the socket."""

    def __init__(self, gate: RedisGate, retry_after_s: float, buffer_max: int = 200) -> None:
        self.gate = gate
        self.retry_after_s = retry_after_s
        self.buffer_max = buffer_max
        self._listeners: dict[str, set[asyncio.Queue[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def listen(
        self, location_id: UUID, ready_timeout_s: float = 5.0
    ) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of this location's events (JSON text) while the context is open.

        Waits until the subscription is live, so nothing published after entry is missed.
        A listener that falls ``buffer_max`` events behind loses the oldest ones (the kiosk
        re-reads the queue on reconnect anyway).
        """
        channel = f"{_QUEUE_PREFIX}{location_id}"
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=self.buffer_max)
        self._listeners.setdefault(channel, set()).add(queue)
        if self._task is None or self._task.done():
            self._subscribed.clear()
            self._task = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(ready_timeout_s):
                await self._subscribed.wait()
            yield queue
        finally:
            listeners = self._listeners.get(channel, set())
            listeners.discard(queue)
            if not listeners:
                self._listeners.pop(channel, None)

    async def _run(self) -> None:
        while True:
            pubsub = self.gate.client.pubsub()
            try:
                await pubsub.psubscribe(QUEUE_CHANNEL_PATTERN)
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "pmessage":
                        self._dispatch(str(message["channel"]), str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: listeners wait; kiosks re-read on reconnect
                self._subscribed.clear()
                log.debug("live queue feed interrupted: %s", exc)
                await asyncio.sleep(self.retry_after_s)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, channel: str, data: str) -> None:
        for queue in self._listeners.get(channel, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


def queue_hello(location_id: UUID) -> str:
    """The first message on a live socket: the subscription is live from here on."""
    return _encode({"event": "subscribed", "location_id": str(location_id)}).decode()

"""Locations, menus and pickup slots. Menus are read on every checkout, so they are cached per
process and dropped on change: the process that changes a menu publishes on Redis, every
process drops its copy; a short TTL bounds staleness if a message is missed (Redis down).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from server.catalog import sql
from server.catalog.model import (
    BOOKING_HORIZON,
    Location,
    MenuIndex,
    PricedItem,
    PricedModifier,
    is_open,
    local_date,
    slot_runs_after_today,
    slots_on,
)
from server.infra.audit import audit
from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.infra.redis import RedisGate, RedisUnavailable
from shared import contract

__all__ = ["CATALOG_CHANNEL", "Catalog"]

CATALOG_CHANNEL = "rg:catalog-changed"


def _location(row: asyncpg.Record) -> Location:
    return msgspec.convert(dict(row), Location)


class Catalog:
    def __init__(self, db: Database, gate: RedisGate, ttl_s: float) -> None:
        self.db = db
        self.gate = gate
        self._menus = SingleFlightCache(self._load_menu, ttl_s, "menu")

    async def locations(self) -> list[contract.Location]:
        now = datetime.now(UTC)
        rows = await self.db.fetch(sql.LOCATIONS)
        return [
            contract.Location(
                id=info.id,
                name=info.name,
                address=info.address,
                timezone=info.timezone,
                open_now=is_open(info, now),
                lead_time_min=info.lead_time_min,
                slot_minutes=info.slot_minutes,
                opening_hours=info.opening_hours,
            )
            for info in map(_location, rows)
        ]

    async def menu(self, location_id: UUID) -> MenuIndex:
        """The priced menu of a location, from the cache (see SingleFlightCache)."""
        return await self._menus.get(location_id)

    async def _load_menu(self, location_id: UUID) -> MenuIndex:
        async with self.db.connection() as conn:
            row = await conn.fetchrow(sql.LOCATION, location_id)
            if row is None:
                raise Problem(404, "location-not-found", f"no location {location_id}")
            rows = await conn.fetch(sql.MENU, location_id, row["brand_id"])
        location = _location(row)
        items: dict[UUID, PricedItem] = {}
        categories: dict[UUID, tuple[str, list[contract.MenuItem]]] = {}
        for r in rows:
            modifiers = {
                UUID(m["id"]): PricedModifier(
                    UUID(m["id"]), m["group"], m["name"], m["price_delta_minor"]
                )
                for m in r["modifiers"]
            }
            earns = r["earns_points"] and r["category_earns"] and not r["is_gift_card"]
            items[r["id"]] = PricedItem(
                id=r["id"],
                sku=r["sku"],
                name=r["name"],
                price_minor=r["price_minor"],
                earns_points=earns,
                available=r["available"],
                modifiers=modifiers,
            )
            categories.setdefault(r["category_id"], (r["category_name"], []))[1].append(
                contract.MenuItem(
                    id=r["id"],
                    sku=r["sku"],
                    name=r["name"],
                    description=r["description"],
                    price_minor=r["price_minor"],
                    available=r["available"],
                    earns_points=earns,
                    modifiers=[
                        contract.Modifier(
                            id=m.id,
                            group=m.group,
                            name=m.name,
                            price_delta_minor=m.price_delta_minor,
                        )
                        for m in modifiers.values()
                    ],
                )
            )
        menu = contract.Menu(
            location_id=location_id,
            currency=row["currency"],
            categories=[
                contract.MenuCategory(id=cid, name=name, items=entries)
                for cid, (name, entries) in categories.items()
            ],
        )
        return MenuIndex(location=location, currency=row["currency"], items=items, menu=menu)

    def forget(self, location_id: UUID | None = None) -> None:
        self._menus.forget(location_id)

    async def set_availability(
        self, staff: Principal, location_id: UUID, item_id: UUID, available: bool
    ) -> None:
        """Mark an item (un)available at one of the staff member's locations (404 for any
        other, another brand's included), audited, and tell every process to drop the menu."""
        index = await self.menu(location_id)
        if index.location.brand_id != staff.brand_id or not staff.covers(location_id):
            raise Problem(404, "location-not-found", f"no location {location_id}")
        if item_id not in index.items:
            raise Problem(404, "item-not-found", f"no item {item_id} on this menu")
        async with self.db.transaction() as conn:
            await conn.execute(
                sql.SET_AVAILABLE if available else sql.SET_UNAVAILABLE, location_id, item_id
            )
            detail = {"location_id": str(location_id), "item_id": str(item_id)}
            await audit(conn, staff, "item.availability", None, {**detail, "available": available})
        self.forget(location_id)
        # Without Redis, other processes fall back on the TTL.
        with contextlib.suppress(RedisUnavailable):
            await self.gate.run(lambda: self.gate.client.publish(CATALOG_CHANNEL, str(location_id)))

    async def slots(self, location_id: UUID, day: date | None) -> contract.Slots:
        """The pickup slots of ``day`` at the location (default: its own today, not UTC's)
        with their free capacity; refuses a day outside the booking horizon."""
        location = (await self.menu(location_id)).location
        now = datetime.now(UTC)
        today = local_date(location, now)
        day = day or today
        if not today <= day <= today + BOOKING_HORIZON:
            raise Problem(
                422,
                "date-out-of-range",
                f"pickup slots are shown from today up to {BOOKING_HORIZON.days} days ahead",
            )
        local_noon = datetime(day.year, day.month, day.day, 12, tzinfo=location.tz)
        starts = slots_on(location, local_noon)
        earliest = now + timedelta(minutes=location.lead_time_min)
        counts: dict[datetime, int] = {}
        if starts:
            rows = await self.db.fetch(
                sql.SLOT_COUNTS, location_id, starts[0], starts[-1] + timedelta(minutes=1)
            )
            counts = {r["slot_start"]: r["orders"] for r in rows}
        return contract.Slots(
            location_id=location_id,
            date=day,
            slots=[
                contract.Slot(
                    starts_at=start,
                    capacity=location.orders_per_slot,
                    free=max(0, location.orders_per_slot - counts.get(start, 0)),
                )
                for start in starts
                if start >= earliest
            ],
        )

    async def next_free_slot(self, location: Location, now: datetime) -> datetime | None:
        """The first slot with room after the location's today, within the booking horizon
        (None: every one is full, or the location is closed until then). For a refusal: it
        names the next time an "as soon as possible" checkout would get."""
        runs = slot_runs_after_today(location, now, BOOKING_HORIZON.days)
        if not runs:
            return None
        found: datetime | None = await self.db.fetchval(
            sql.FIRST_SLOT_WITH_ROOM,
            location.id,
            [first for first, _ in runs],
            [last for _, last in runs],
            timedelta(minutes=location.slot_minutes),
            location.orders_per_slot,
        )
        return found

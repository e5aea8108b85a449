"""The locations a staff member may act for, cached per process."""

from __future__ import annotations

from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec

from server.catalog import sql
from server.catalog.model import Location
from server.infra.cache import SingleFlightCache
from server.infra.db import Database
from server.infra.identity import Principal
from server.infra.problems import Problem

__all__ = ["Locations"]

_EVERY = "every location"  # the one key: all locations are loaded at once


class Locations:
    """Every location's brand, name and timezone, cached briefly (they rarely change)."""

    # A location created a moment ago is found after at most this long, without letting
    # lookups of unknown ids query the database every time.
    MISS_REFRESH_S = 1.0

    def __init__(self, db: Database, ttl_s: float) -> None:
        self._db = db
        self._cache = SingleFlightCache(self._load, ttl_s, "locations")

    async def _all(self, missing: UUID | None = None) -> dict[UUID, Location]:
        places = await self._cache.get(_EVERY)
        # Forget only a loaded map: while its reload runs, other misses wait for it.
        if missing is not None and missing not in places:
            if self.MISS_REFRESH_S < self._cache.age_s(_EVERY) < float("inf"):
                self._cache.forget(_EVERY)
            places = await self._cache.get(_EVERY)
        return places

    async def _load(self, _: str) -> dict[UUID, Location]:
        rows = await self._db.fetch(sql.LOCATIONS)
        return {r["id"]: msgspec.convert(dict(r), Location) for r in rows}

    async def get(self, location_id: UUID) -> Location | None:
        return (await self._all(location_id)).get(location_id)

    async def of_staff(self, staff: Principal, location_id: UUID) -> Location:
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

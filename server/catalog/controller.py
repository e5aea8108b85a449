from __future__ import annotations

from datetime import date
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.catalog.service import Catalog
from server.infra.identity import Principal, requires_role
from server.infra.openapi import BEARER
from shared import contract

__all__ = ["CatalogController"]


class AvailabilityIn(msgspec.Struct, kw_only=True, frozen=True):
    available: bool


class CatalogController(Controller):
    path = "/v1/locations"
    tags = ["catalog"]

    @get("/")
    async def locations(self, catalog: NamedDependency[Catalog]) -> list[contract.Location]:
        """Every location, with whether it is open right now."""
        return await catalog.locations()

    @get("/{location_id:uuid}/menu")
    async def menu(
        self, catalog: NamedDependency[Catalog], location_id: FromPath[UUID]
    ) -> contract.Menu:
        """The menu of a location with prices, modifiers and today's availability."""
        return (await catalog.menu(location_id)).menu

    @get("/{location_id:uuid}/slots")
    async def slots(
        self,
        catalog: NamedDependency[Catalog],
        location_id: FromPath[UUID],
        day: Annotated[date | None, QueryParameter(name="date")] = None,
    ) -> contract.Slots:
        """Pickup slots of a day (default: the location's today) with their free capacity."""
        return await catalog.slots(location_id, day)

    @post(
        "/{location_id:uuid}/items/{item_id:uuid}/availability",
        guards=[requires_role("shift_lead")],
        security=BEARER,
        status_code=204,
    )
    async def set_availability(
        self,
        catalog: NamedDependency[Catalog],
        principal: NamedDependency[Principal],
        location_id: FromPath[UUID],
        item_id: FromPath[UUID],
        data: JSONBody[AvailabilityIn],
    ) -> None:
        """Sell out (or bring back) an item at a location; every API process drops its menu."""
        await catalog.set_availability(principal, location_id, item_id, data.available)

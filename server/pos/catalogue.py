"""What the brand's catalogue says about a receipt's SKUs and categories, kept in-process.

Every receipt asked PostgreSQL two questions whose answers barely change (which menu item a
SKU is and whether it earns; whether a category earns): two round trips of a dozen, for
nothing new (issue 23). Answers are kept per (brand, SKU) and (brand, category) for
``Settings.menu_cache_ttl_s``, unknown SKUs and earning categories included, and a receipt
asks only about the ones it names that are not fresh.

Staleness allowed: a change to the menu (an item or category that stops or starts earning, a
new SKU) reaches intake within ``menu_cache_ttl_s`` (30 s by default) per process, as the
menu the app shows does; a receipt in that window earns by the rule read before. The cache
holds at most ``pos_catalogue_cache_entries`` answers and starts afresh when full, so a till
that sends ever new SKUs costs round trips, never memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from server.pos import sql

__all__ = ["Catalogue", "CatalogueCache", "MenuItem"]


@dataclass(frozen=True, slots=True)
class MenuItem:
    """The menu item a SKU names, and whether the catalogue says it earns nothing."""

    item_id: UUID
    excluded: bool


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The answers for one receipt (or chunk): the known SKUs' items, and the categories
    (lower case) that earn nothing."""

    items: dict[str, MenuItem]
    no_category: frozenset[str]

    def excluded(self, sku: str | None, category: str | None) -> bool:
        item = self.items.get(sku) if sku is not None else None
        return (item is not None and item.excluded) or (
            category is not None and category.lower() in self.no_category
        )

    def menu(self) -> dict[str, UUID]:
        return {sku: item.item_id for sku, item in self.items.items()}


class CatalogueCache:
    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._skus: dict[tuple[UUID, str], tuple[float, MenuItem | None]] = {}
        self._categories: dict[tuple[UUID, str], tuple[float, bool]] = {}

    async def read(
        self,
        conn: asyncpg.Connection,
        brand_id: UUID,
        skus: Iterable[str],
        categories: Iterable[str],
    ) -> Catalogue:
        """The catalogue's answers about ``skus`` and ``categories`` (any case), reading on
        ``conn`` only those not fresh in the cache (one statement for each kind at most)."""
        now = time.monotonic()
        items = await self._items(conn, brand_id, set(skus), now)
        no_category = await self._no_category(conn, brand_id, {c.lower() for c in categories}, now)
        return Catalogue(items, frozenset(no_category))

    async def _items(
        self, conn: asyncpg.Connection, brand_id: UUID, skus: set[str], now: float
    ) -> dict[str, MenuItem]:
        found: dict[str, MenuItem] = {}
        missing: list[str] = []
        for sku in skus:
            cached = self._skus.get((brand_id, sku))
            if cached is None or cached[0] <= now:
                missing.append(sku)
            elif cached[1] is not None:
                found[sku] = cached[1]
        if missing:
            missing.sort()
            rows = await conn.fetch(sql.ITEMS_BY_SKU, brand_id, missing)
            read = {r["sku"]: MenuItem(r["id"], r["excluded"]) for r in rows}
            self._make_room(self._skus, len(missing))
            for sku in missing:
                self._skus[(brand_id, sku)] = (now + self.ttl_s, read.get(sku))
            found.update(read)
        return found

    async def _no_category(
        self, conn: asyncpg.Connection, brand_id: UUID, categories: set[str], now: float
    ) -> set[str]:
        excluded: set[str] = set()
        missing: list[str] = []
        for category in categories:
            cached = self._categories.get((brand_id, category))
            if cached is None or cached[0] <= now:
                missing.append(category)
            elif cached[1]:
                excluded.add(category)
        if missing:
            missing.sort()
            rows = await conn.fetch(sql.NON_EARNING_CATEGORIES, brand_id, missing)
            read = {r["name"] for r in rows}
            self._make_room(self._categories, len(missing))
            for category in missing:
                self._categories[(brand_id, category)] = (now + self.ttl_s, category in read)
            excluded |= read
        return excluded

    def _make_room(self, entries: dict[tuple[UUID, str], Any], adding: int) -> None:
        if len(entries) + adding > self.max_entries:
            entries.clear()

    def forget(self) -> None:
        """Drop every answer: the next receipts read the catalogue afresh."""
        self._skus.clear()
        self._categories.clear()

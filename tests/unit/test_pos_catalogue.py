"""The intake's catalogue cache (server/pos/catalogue.py): asks only about what is not fresh,
remembers unknown SKUs too, reads afresh after its TTL, and never grows past its bound."""

from __future__ import annotations

import uuid
from typing import Any

from server.pos import sql
from server.pos.catalogue import CatalogueCache

BRAND = uuid.uuid4()
CAP, BEANS = uuid.uuid4(), uuid.uuid4()


class FakeConnection:
    """Answers the two catalogue reads from a fixed menu and records what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, list[str]]] = []
        self.items = {"CAP": (CAP, False), "BEANS": (BEANS, True)}
        self.no_category = {"merch"}

    async def fetch(self, statement: str, brand_id: uuid.UUID, names: list[str]) -> list[Any]:
        assert brand_id == BRAND
        if statement == sql.ITEMS_BY_SKU:
            self.asked.append(("sku", names))
            return [
                {"sku": s, "id": self.items[s][0], "excluded": self.items[s][1]}
                for s in names
                if s in self.items
            ]
        assert statement == sql.NON_EARNING_CATEGORIES
        self.asked.append(("category", names))
        return [{"name": c} for c in names if c in self.no_category]


async def test_a_fresh_answer_is_not_asked_again() -> None:
    cache, conn = CatalogueCache(ttl_s=60, max_entries=100), FakeConnection()
    db: Any = conn
    first = await cache.read(db, BRAND, {"CAP", "BEANS", "NOPE"}, {"Merch", "coffee"})
    assert first.menu() == {"CAP": CAP, "BEANS": BEANS}
    assert first.excluded("BEANS", None) and first.excluded(None, "MERCH")
    assert not first.excluded("CAP", "coffee") and not first.excluded("NOPE", None)
    assert conn.asked == [("sku", ["BEANS", "CAP", "NOPE"]), ("category", ["coffee", "merch"])]
    conn.items["NOPE"] = (uuid.uuid4(), True)  # a change within the TTL is not seen yet
    again = await cache.read(db, BRAND, {"CAP", "NOPE", "LAT"}, {"merch"})
    assert conn.asked[2:] == [("sku", ["LAT"])]
    assert not again.excluded("NOPE", None) and again.excluded(None, "merch")


async def test_past_its_ttl_an_answer_is_read_afresh() -> None:
    cache, conn = CatalogueCache(ttl_s=0, max_entries=100), FakeConnection()
    db: Any = conn
    await cache.read(db, BRAND, {"CAP"}, set())
    conn.items["CAP"] = (CAP, True)
    later = await cache.read(db, BRAND, {"CAP"}, set())
    assert later.excluded("CAP", None)
    assert conn.asked == [("sku", ["CAP"]), ("sku", ["CAP"])]


async def test_the_cache_starts_afresh_rather_than_grow_past_its_bound() -> None:
    cache, conn = CatalogueCache(ttl_s=60, max_entries=3), FakeConnection()
    db: Any = conn
    await cache.read(db, BRAND, {"A", "B", "C"}, set())
    await cache.read(db, BRAND, {"D"}, set())
    assert len(cache._skus) == 1
    await cache.read(db, BRAND, {"A"}, set())
    assert conn.asked[-1] == ("sku", ["A"])

"""What a till's receipt is priced by: the brand's currency, the catalogue (which lines earn
nothing, which menu items the SKUs name) and the loyalty program's point value. Shared by the
receipt's transaction, its quick statements and the batch's chunks (server/pos/receipts.py,
server/pos/chunks.py), so that all three price a receipt alike and read each once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from uuid import UUID

import asyncpg

from server.infra.problems import Problem
from server.pos import sql
from server.pos.auth import Till
from server.pos.catalogue import CatalogueCache
from server.pos.model import Pricing, price_receipt
from server.pos.points import PointsPort
from server.settings import Settings
from shared.pos import ReceiptIn, ReceiptLineIn

__all__ = ["Excluded", "TillPricing"]

# Whether a line earns nothing by the catalogue (an excluded SKU or category).
Excluded = Callable[[ReceiptLineIn], bool]


class TillPricing:
    def __init__(self, settings: Settings, points: PointsPort) -> None:
        self.points = points
        # A brand's currency never changes, so it is kept once read.
        self._currencies: dict[UUID, str] = {}
        self.catalogue = CatalogueCache(
            settings.menu_cache_ttl_s, settings.pos_catalogue_cache_entries
        )

    def known_currency(self, till: Till) -> str | None:
        """The brand's currency if it was read before (no round trip)."""
        return self._currencies.get(till.brand_id)

    async def currency_of(self, conn: asyncpg.Connection, till: Till) -> str:
        """The brand's ISO 4217 currency."""
        currency = self._currencies.get(till.brand_id)
        if currency is None:
            currency = self._currencies[till.brand_id] = str(
                await conn.fetchval(sql.BRAND_CURRENCY, till.brand_id)
            )
        return currency

    async def currency(self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn) -> str:
        """The brand's currency; 422 ``currency-mismatch`` for a receipt in another one."""
        currency = await self.currency_of(conn, till)
        if receipt.currency is not None and receipt.currency != currency:
            raise Problem(
                422, "currency-mismatch", f"this brand takes {currency}, not {receipt.currency}"
            )
        return currency

    async def catalogue_of(
        self, conn: asyncpg.Connection, till: Till, receipts: Sequence[ReceiptIn]
    ) -> tuple[Excluded, dict[str, UUID]]:
        """Whether a line earns nothing by the catalogue, and the menu items the SKUs name
        (as :meth:`price` reads them), read once for all of ``receipts``."""
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

    async def menu_of(
        self, conn: asyncpg.Connection, brand_id: UUID, skus: Iterable[str]
    ) -> dict[str, UUID]:
        """The menu items ``skus`` name at the brand (those it sells), as :meth:`price`
        reads them."""
        return (await self.catalogue.read(conn, brand_id, skus, ())).menu()

    async def price(
        self, conn: asyncpg.Connection, till: Till, receipt: ReceiptIn
    ) -> tuple[Pricing, dict[str, UUID]]:
        """The receipt priced by the brand's rules (422 for one that cannot be), and the menu
        items its SKUs name (the catalogue as read within ``menu_cache_ttl_s``:
        server/pos/catalogue.py)."""
        excluded, menu = await self.catalogue_of(conn, till, (receipt,))
        program = await self.points.program(conn, till.brand_id)
        pricing = price_receipt(
            receipt, point_value_minor=program.point_value_minor, excluded=excluded
        )
        return pricing, menu

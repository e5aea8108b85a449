from __future__ import annotations

from typing import Annotated, Any

import qrcode
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from server.guests.service import Guests
from server.infra.identity import Principal, requires_guest
from server.infra.openapi import BEARER, problems
from server.loyalty.service import Loyalty
from server.settings import Settings
from shared import contract

__all__ = ["MeController"]


class MeController(Controller):
    path = "/v1/me"
    guards = [requires_guest]
    security = BEARER
    tags = ["guests"]

    @get("/", responses=problems(404))
    async def me(
        self, guests: NamedDependency[Guests], principal: NamedDependency[Principal]
    ) -> contract.Me:
        """The signed-in guest's profile and tier."""
        return await guests.me(principal.subject_id, principal.brand_id)

    @get("/wallet", responses=problems(404))
    async def wallet(
        self, loyalty: NamedDependency[Loyalty], principal: NamedDependency[Principal]
    ) -> contract.Wallet:
        """Spendable points, points on hold, tier progress and the lots that expire soonest."""
        return await loyalty.wallet(principal.subject_id, principal.brand_id)

    @get("/ledger")
    async def ledger(
        self,
        loyalty: NamedDependency[Loyalty],
        principal: NamedDependency[Principal],
        settings: NamedDependency[Settings],
        cursor: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> contract.LedgerPage:
        """Every points movement, newest first, a page at a time."""
        return await loyalty.ledger_page(
            principal.subject_id, cursor, min(limit, settings.page_size_max)
        )

    @get("/qr", media_type="application/json")
    async def qr(
        self,
        request: Request[Any, Any, Any],
        guests: NamedDependency[Guests],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        """The rotating QR code; ``Accept: image/png`` gives the image to show at the counter."""
        code = await guests.qr_code(principal.subject_id)
        if "image/png" in request.headers.get("accept", ""):
            import io

            image = qrcode.make(code.code, box_size=8, border=2)
            buffer = io.BytesIO()
            image.save(buffer)
            return Response(content=buffer.getvalue(), media_type="image/png")
        return Response(content=code)

"""Orders out to the till over HTTP: the admin's dead-letter list and replay, and the feed
tills poll (``GET /v1/pos/orders?after=``) instead of receiving webhooks."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from server.infra.identity import Principal, requires_role
from server.infra.openapi import BEARER, POS_SIGNED, problems
from server.pos.ports import SignedIntegration
from server.pos.webhooks import PosWebhooks
from server.settings import Settings
from shared.pos import PosOrderFeed, WebhookDeadLetter

__all__ = ["PosOrdersFeedController", "WebhookDeliveriesController"]


class WebhookDeliveriesController(Controller):
    path = "/v1/pos/webhook-deliveries"
    tags = ["pos"]
    guards = [requires_role("admin")]
    security = BEARER

    @get("/dead")
    async def dead(
        self,
        pos_webhooks: NamedDependency[PosWebhooks],
        principal: NamedDependency[Principal],
        integration_id: Annotated[UUID | None, QueryParameter()] = None,
    ) -> list[WebhookDeadLetter]:
        """Deliveries to the brand's tills that failed every attempt, oldest first."""
        return await pos_webhooks.dead_letters(principal.brand_id, integration_id)

    @post("/{webhook_id:str}/replay", status_code=202, responses=problems(409))
    async def replay(
        self,
        pos_webhooks: NamedDependency[PosWebhooks],
        principal: NamedDependency[Principal],
        webhook_id: FromPath[str],
    ) -> dict[str, str]:
        """Send a dead letter again, from the first rung of the retry ladder; 404 when it is
        not the brand's, 409 ``not-dead-letter`` when it is not dead."""
        await pos_webhooks.replay(principal.brand_id, webhook_id)
        return {"webhook_id": webhook_id, "state": "pending"}


class PosOrdersFeedController(Controller):
    """Signed by a till's key like every POS request: registered once pos-in's signature
    guard (``requires_till``) and its ``till`` dependency are on main (server/pos/ports.py)."""

    path = "/v1/pos/orders"
    tags = ["pos"]
    security = POS_SIGNED

    @get()
    async def feed(
        self,
        pos_webhooks: NamedDependency[PosWebhooks],
        till: NamedDependency[SignedIntegration],
        settings: NamedDependency[Settings],
        after: Annotated[str | None, QueryParameter(max_length=20)] = None,
    ) -> PosOrderFeed:
        """Pre-orders and status changes of the integration's location after ``after``."""
        return await pos_webhooks.feed(till.location_id, after, settings.pos_feed_page_max)

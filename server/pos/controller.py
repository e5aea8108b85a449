"""POS routes: what a till calls (signed, DESIGN §10), the admin's integrations, and a
guest's claim of an anonymous receipt. Each handler calls one service function."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from server.infra.http import IdempotencyKeyHeader, stored_response
from server.infra.idempotency import require_key
from server.infra.identity import Principal, requires_guest, requires_role
from server.infra.openapi import BEARER, POS_SIGNED, answer, problems
from server.pos.auth import Till, requires_till
from server.pos.batch import BatchIntake
from server.pos.claims import Claims
from server.pos.integrations import (
    IntegrationCreated,
    IntegrationIn,
    Integrations,
    IntegrationView,
    KeyCreated,
    WebhookIn,
    WebhookSet,
)
from server.pos.receipts import Intake
from server.pos.tender import Tender
from shared import contract
from shared.pos import (
    BatchLineResult,
    ClaimIn,
    ClaimResult,
    PosGuestLookupIn,
    PosGuestLookupOut,
    PosRedemptionIn,
    ReceiptIn,
    ReceiptOut,
)

__all__ = ["RECEIPTS_BATCH", "ROUTES"]

RECEIPTS_BATCH = "/v1/pos/receipts:batch"


class TillController(Controller):
    path = "/v1/pos"
    guards = [requires_till]
    security = POS_SIGNED
    tags = ["pos"]

    @post(
        "/receipts",
        status_code=201,
        responses={
            201: answer(ReceiptOut, "The receipt as stored (a replay: the first answer)"),
            **problems(404, 409),
        },
    )
    async def receipt(
        self,
        intake: NamedDependency[Intake],
        till: NamedDependency[Till],
        data: JSONBody[ReceiptIn],
    ) -> Response[bytes]:
        """One receipt from the till; a replay answers exactly as the first time."""
        taken = await intake.take(till, data)
        return Response(content=taken.body, status_code=201, media_type="application/json")

    @post("/guests/lookup", status_code=200, responses=problems(404, 429))
    async def lookup(
        self,
        tender: NamedDependency[Tender],
        till: NamedDependency[Till],
        data: JSONBody[PosGuestLookupIn],
    ) -> PosGuestLookupOut:
        """The guest in front of the till (masked) and the points they can spend."""
        return await tender.lookup(till, data)

    @post(
        "/redemptions",
        status_code=201,
        responses={201: answer(contract.Transfer, "The pending hold"), **problems(404, 429)},
    )
    async def reserve(
        self,
        tender: NamedDependency[Tender],
        till: NamedDependency[Till],
        data: JSONBody[PosRedemptionIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Hold points as a tender: pending until the till posts or voids it."""
        return stored_response(await tender.reserve(till, data, require_key(idempotency_key)))

    @post("/redemptions/{transfer_id:uuid}/post", status_code=200, responses=problems(409))
    async def post_hold(
        self,
        tender: NamedDependency[Tender],
        till: NamedDependency[Till],
        transfer_id: FromPath[UUID],
    ) -> contract.Transfer:
        """Take the held points: the sale went through."""
        return await tender.resolve(till, transfer_id, post=True)

    @post("/redemptions/{transfer_id:uuid}/void", status_code=200, responses=problems(409))
    async def void_hold(
        self,
        tender: NamedDependency[Tender],
        till: NamedDependency[Till],
        transfer_id: FromPath[UUID],
    ) -> contract.Transfer:
        """Release the held points: the sale did not go through."""
        return await tender.resolve(till, transfer_id, post=False)


# Litestar's own body limit is off here: the batch bounds itself (pos_batch_max_bytes) as it
# streams, and a large batch is its reason to exist. Its NDJSON body is read by the handler,
# so the document does not describe it.
@post(
    RECEIPTS_BATCH,
    status_code=200,
    tags=["pos"],
    request_max_body_size=None,
    security=POS_SIGNED,
    responses=problems(401, 408, 413),
)
async def receipts_batch(
    request: Request[Any, Any, Any], batch_intake: NamedDependency[BatchIntake]
) -> list[BatchLineResult]:
    """NDJSON receipts, streamed; one result per line (1-based), bad lines refused alone.
    Signed like every till request: the signature covers the raw body."""
    return await batch_intake.take(request.headers, request.stream())


class IntegrationsController(Controller):
    path = "/v1/pos/integrations"
    guards = [requires_role("admin")]
    security = BEARER
    tags = ["pos"]

    @post("/", status_code=201, responses=problems(404))
    async def create(
        self,
        pos_integrations: NamedDependency[Integrations],
        principal: NamedDependency[Principal],
        data: JSONBody[IntegrationIn],
    ) -> IntegrationCreated:
        """A till integration for a location of the admin's brand; the secret is shown once."""
        return await pos_integrations.create(data, principal.brand_id)

    @get("/")
    async def list_integrations(
        self, pos_integrations: NamedDependency[Integrations], principal: NamedDependency[Principal]
    ) -> list[IntegrationView]:
        """The brand's integrations and their keys (digests, never secrets)."""
        return await pos_integrations.list(principal.brand_id)

    @post("/{integration_id:uuid}/keys", status_code=201, responses=problems(409))
    async def add_key(
        self,
        pos_integrations: NamedDependency[Integrations],
        principal: NamedDependency[Principal],
        integration_id: FromPath[UUID],
    ) -> KeyCreated:
        """A second key, for rotation (at most two active)."""
        return await pos_integrations.add_key(principal.brand_id, integration_id)

    @put("/{integration_id:uuid}/webhook", status_code=200, responses=problems(404))
    async def set_webhook(
        self,
        pos_integrations: NamedDependency[Integrations],
        principal: NamedDependency[Principal],
        integration_id: FromPath[UUID],
        data: JSONBody[WebhookIn],
    ) -> WebhookSet:
        """Send the till's webhooks to a new URL with a new secret (shown once), or stop them
        (null); the secret replaced keeps signing beside the new one for a while."""
        return await pos_integrations.set_webhook(principal.brand_id, integration_id, data)

    @delete("/{integration_id:uuid}/keys/{key_id:str}", status_code=204)
    async def revoke_key(
        self,
        pos_integrations: NamedDependency[Integrations],
        principal: NamedDependency[Principal],
        integration_id: FromPath[UUID],
        key_id: FromPath[str],
    ) -> None:
        """Revoke a key; the next request signed with it is refused."""
        await pos_integrations.revoke(principal.brand_id, integration_id, key_id)


class ClaimsController(Controller):
    path = "/v1/me/claims"
    guards = [requires_guest]
    security = BEARER
    tags = ["pos", "guests"]

    @post("/", status_code=201, responses=problems(404, 409))
    async def claim(
        self,
        claims: NamedDependency[Claims],
        principal: NamedDependency[Principal],
        data: JSONBody[ClaimIn],
    ) -> ClaimResult:
        """Claim an anonymous till receipt by the code printed on it (once)."""
        return await claims.claim(principal, data)


ROUTES: list[Any] = [TillController, receipts_batch, IntegrationsController, ClaimsController]

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from server.infra.http import IdempotencyKeyHeader, stored_response
from server.infra.idempotency import require_key
from server.infra.identity import Principal, requires_role
from server.infra.openapi import BEARER, answer
from server.loyalty.service import Loyalty
from shared import contract

__all__ = ["AdjustmentsController"]


class AdjustmentsController(Controller):
    path = "/v1/guests"
    security = BEARER
    tags = ["loyalty"]

    @post(
        "/{guest_id:uuid}/adjustments",
        guards=[requires_role("manager")],
        status_code=201,
        responses={201: answer(contract.Transfer, "The adjustment")},
    )
    async def adjust(
        self,
        loyalty: NamedDependency[Loyalty],
        principal: NamedDependency[Principal],
        guest_id: FromPath[UUID],
        data: JSONBody[contract.AdjustmentIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """A manager's correction of a guest's points, with a reason; audited."""
        return stored_response(
            await loyalty.manager_adjustment(
                principal, guest_id, data, require_key(idempotency_key)
            )
        )

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.infra.http import IdempotencyKeyHeader, stored_response
from server.infra.idempotency import require_key
from server.infra.identity import Principal, requires_authenticated, requires_guest, requires_staff
from server.infra.openapi import BEARER, answer, problems
from server.orders.service import Orders
from shared import contract

__all__ = ["MyOrdersController", "OrdersController"]

_ORDER = answer(contract.Order, "The order")


class OrdersController(Controller):
    path = "/v1/orders"
    security = BEARER
    tags = ["orders"]

    @post(
        "/",
        guards=[requires_guest],
        responses={**problems(404, 409), 201: answer(contract.Order, "Placed")},
    )
    async def place(
        self,
        orders: NamedDependency[Orders],
        request: Request[Principal, str, State],
        data: JSONBody[contract.OrderIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Price the order on the server, reserve the points and create it (201)."""
        # Most checkouts never reach this handler: server/orders/lane.py serves the plain
        # request past Litestar and hands this one the rest. A guard, header or parameter
        # added here must be added there too; tests/api/test_checkout_lane.py compares both.
        # The principal comes from request.user, not as a second dependency: Litestar resolves
        # two or more dependencies in an anyio task group, ~7 % of a checkout's CPU (issue 5).
        placed = await orders.place(request.user, data, require_key(idempotency_key))
        return stored_response(placed)

    @get("/{order_id:uuid}", guards=[requires_authenticated])
    async def show(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        order_id: FromPath[UUID],
    ) -> contract.Order:
        """One order: its owner and the staff of its location see it; anyone else gets 404."""
        return await orders.get(principal, order_id)

    @post(
        "/{order_id:uuid}/payments",
        guards=[requires_guest],
        status_code=200,
        responses={**problems(402, 409), 200: _ORDER},
    )
    async def pay(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        order_id: FromPath[UUID],
        data: JSONBody[contract.PaymentIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Pay the money part; success places the order and posts the reserved points."""
        return stored_response(
            await orders.pay(principal, order_id, data, require_key(idempotency_key))
        )

    @post(
        "/{order_id:uuid}/status", guards=[requires_staff], status_code=200, responses=problems(409)
    )
    async def status(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        order_id: FromPath[UUID],
        data: JSONBody[contract.StatusChange],
    ) -> contract.Order:
        """Move the order one step (placed → accepted → preparing → ready → completed)."""
        return await orders.change_status(principal, order_id, data.status)

    @post(
        "/{order_id:uuid}/cancel",
        guards=[requires_authenticated],
        status_code=200,
        responses=problems(409),
    )
    async def cancel(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        order_id: FromPath[UUID],
    ) -> contract.Order:
        """Cancel: the guest before acceptance, a shift lead before preparation."""
        return await orders.cancel(principal, order_id)

    @post(
        "/{order_id:uuid}/refunds",
        guards=[requires_staff],
        status_code=200,
        responses={**problems(409), 200: _ORDER},
    )
    async def refund(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        order_id: FromPath[UUID],
        data: JSONBody[contract.RefundIn],
        idempotency_key: IdempotencyKeyHeader,
    ) -> Response[bytes]:
        """Refund lines of a completed order; points move back exactly once per line."""
        return stored_response(
            await orders.refund_lines(principal, order_id, data, require_key(idempotency_key))
        )


class MyOrdersController(Controller):
    """The signed-in guest's own orders (beside the rest of ``/v1/me``, which guests serve)."""

    path = "/v1/me"
    guards = [requires_guest]
    security = BEARER
    tags = ["guests"]

    @get("/orders")
    async def orders(
        self,
        orders: NamedDependency[Orders],
        principal: NamedDependency[Principal],
        before: Annotated[datetime | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> list[contract.Order]:
        """The guest's orders, newest first."""
        return await orders.list_for_guest(principal.subject_id, before, limit)

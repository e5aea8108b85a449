"""Orders as the API shows them, who may see one, and the events that announce a change:
shared by the checkout, the lifecycle and the refunds (and the counter's queue)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from server.guests.model import display_name
from server.infra.identity import Principal
from server.infra.problems import Problem
from server.orders import sql
from shared import contract

__all__ = ["announce", "order_from_rows", "visible"]


def order_from_rows(
    order: Mapping[str, Any] | asyncpg.Record, lines: list[asyncpg.Record]
) -> contract.Order:
    return contract.Order(
        id=order["id"],
        status=order["status"],
        location_id=order["location_id"],
        guest_id=order["guest_id"],
        currency=order["currency"],
        subtotal_minor=order["subtotal_minor"],
        discount_minor=order["discount_minor"],
        points_spent=order["points_spent"],
        points_value_minor=order["points_value_minor"],
        amount_due_minor=order["amount_due_minor"],
        points_to_earn=order["points_to_earn"],
        points_earned=order["points_earned"],
        pickup_at=order["pickup_at"],
        created_at=order["created_at"],
        payment_expires_at=order["payment_expires_at"],
        lines=[
            contract.OrderLine(
                id=ln["id"],
                item_id=ln["item_id"],
                sku=ln["sku"],
                name=ln["name"],
                quantity=ln["quantity"],
                unit_price_minor=ln["unit_price_minor"],
                modifiers=list(ln["modifier_names"]),
                gross_minor=ln["gross_minor"],
                discount_minor=ln["discount_minor"],
                points_spent=ln["points_spent"],
                paid_minor=ln["paid_minor"],
                points_earned=ln["points_earned"],
                refunded=ln["refunded"],
            )
            for ln in lines
        ],
    )


async def visible(
    conn: asyncpg.Connection, principal: Principal, order_id: UUID, *, lock: bool
) -> asyncpg.Record:
    """The order if this principal may see it; 404 otherwise (no id probing)."""
    order = await conn.fetchrow(sql.ORDER_FOR_UPDATE if lock else sql.ORDER, order_id)
    allowed = order is not None and (
        (principal.kind == "guest" and order["guest_id"] == principal.subject_id)
        or (
            principal.kind == "staff"
            and order["brand_id"] == principal.brand_id
            and principal.covers(order["location_id"])
        )
    )
    if not allowed:
        raise Problem(404, "order-not-found", f"no order {order_id}")
    assert order is not None
    return order


async def announce(conn: asyncpg.Connection, topic: str, order: contract.Order) -> None:
    """Put an order event in the outbox, in the transaction of the change it announces."""
    name = await conn.fetchrow(sql.GUEST_NAME, order.guest_id)
    # Queues are read by every barista: the masked name, never the full one.
    display = display_name(name["first_name"], name["last_name"], full=False) if name else None
    payload = msgspec.to_builtins(msgspec.structs.replace(order, guest_display_name=display))
    await conn.execute(sql.INSERT_OUTBOX, topic, {"event": topic, "order": payload})

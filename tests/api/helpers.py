"""Shared helpers for API tests: menu lookups, placing and paying orders, ledger checks."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import Client, Demo, GuestHandle


async def menu_items(client: Client, location_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """The location's menu items by SKU."""
    response = await client.get(f"/v1/locations/{location_id}/menu")
    assert response.status_code == 200, response.text
    return {
        item["sku"]: item
        for category in response.json()["categories"]
        for item in category["items"]
    }


async def place(
    client: Client,
    guest: GuestHandle,
    body: dict[str, Any],
    key: str | None = None,
) -> Any:
    headers = {**guest.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    return await client.post("/v1/orders", json=body, headers=headers)


async def pay(client: Client, guest: GuestHandle, order_id: str, token: str = "ok") -> Any:
    return await client.post(
        f"/v1/orders/{order_id}/payments",
        json={"provider": "test", "token": token},
        headers={**guest.headers, "Idempotency-Key": str(uuid.uuid4())},
    )


async def advance(client: Client, demo: Demo, order_id: str, *statuses: str) -> Any:
    response = None
    for status in statuses:
        response = await client.post(
            f"/v1/orders/{order_id}/status",
            json={"status": status},
            headers={"Authorization": f"Bearer {demo.staff['shift_lead']}"},
        )
        assert response.status_code == 200, response.text
    return response


async def spendable(client: Client, guest: GuestHandle) -> int:
    response = await client.get("/v1/me/wallet", headers=guest.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["points_available"])


async def ledger_state(services: Any, guest_id: uuid.UUID) -> tuple[int, int]:
    """(spendable, pending) as PostgreSQL has them."""
    async with services.db.connection() as conn:
        row = await conn.fetchrow(
            "SELECT credits_posted - debits_posted - debits_pending AS spendable, debits_pending"
            " FROM accounts WHERE guest_id = $1",
            guest_id,
        )
    return row["spendable"], row["debits_pending"]


async def redis_state(services: Any, guest_id: uuid.UUID) -> tuple[int, int] | None:
    """(spendable, pending) as Redis has them, or None if the wallet is not loaded."""
    hot = await services.loyalty.hot.read(guest_id)
    if hot is None:
        return None
    return hot[0].spendable, hot[0].pending


async def assert_books_balance(services: Any, brand_id: uuid.UUID) -> None:
    """The brand invariant: accounts sum to zero and every guest row matches its transfers."""
    async with services.db.connection() as conn:
        brand_sum, bad_balances, bad_holds = await services.loyalty.ledger.check(conn, brand_id)
    assert (brand_sum, bad_balances, bad_holds) == (0, 0, 0)


def order_body(
    demo: Demo,
    items: dict[str, dict[str, Any]],
    *lines: tuple[str, int],
    points: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A checkout body at the 24/7 station (open at any hour) for (sku, quantity) lines."""
    return {
        "location_id": str(demo.locations["station"]),
        "lines": [{"item_id": items[sku]["id"], "quantity": quantity} for sku, quantity in lines],
        "points_to_spend": points,
        **extra,
    }

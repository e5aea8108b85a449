"""One guest cannot hold a pickup slot hostage with unpaid orders (issue 21, finding 3): a cap
on open unpaid orders per guest and on a guest's open orders per pickup slot, enforced alike
by the checkout's lane and by the Litestar route (both run place_order, migration 0010)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.settings import Settings
from tests.api.helpers import menu_items, order_body, pay, place
from tests.conftest import Client, Demo, app_client, sign_in


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


@pytest.fixture(params=[True, False], ids=["lane", "litestar"])
async def capped(
    request: pytest.FixtureRequest, settings: Settings, notifier: RecordingNotifier
) -> AsyncIterator[Client]:
    limited = msgspec.structs.replace(
        settings, unpaid_orders_per_guest=2, slot_places_per_guest=3, checkout_lane=request.param
    )
    async with app_client(limited, notifier) as client:
        yield client


def pickup(days: int, hour: int) -> str:
    """A pickup time at the 24/7 station, well past any lead time."""
    day = datetime.now(UTC).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, 0, tzinfo=UTC).isoformat()


async def test_open_unpaid_orders_per_guest_are_capped(
    capped: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    guest = await sign_in(capped, notifier)
    items = await menu_items(capped, demo.locations["station"])
    placed = []
    for hour in (8, 9):
        response = await place(capped, guest, order_body(demo, items, ("CRO", 1),
                                                         pickup_at=pickup(2, hour)))  # fmt: skip
        assert response.status_code == 201, response.text
        placed.append(response.json())
    third = order_body(demo, items, ("CRO", 1), pickup_at=pickup(2, 10))
    refused = await place(capped, guest, third)
    assert refused.status_code == 409 and slug(refused) == "too-many-unpaid-orders", refused.text
    # Nothing was written by the refusal; another guest is not affected.
    other = await sign_in(capped, notifier)
    assert (await place(capped, other, third)).status_code == 201
    # Paying one frees a place for an unpaid order.
    assert (await pay(capped, guest, placed[0]["id"])).status_code == 200
    assert (await place(capped, guest, third)).status_code == 201


async def test_places_per_slot_per_guest_are_capped(
    capped: Client, notifier: RecordingNotifier, demo: Demo
) -> None:
    guest = await sign_in(capped, notifier)
    items = await menu_items(capped, demo.locations["station"])
    body = order_body(demo, items, ("CRO", 1), pickup_at=pickup(3, 12))
    for _ in range(2):
        response = await place(capped, guest, body)
        assert response.status_code == 201, response.text
        assert (await pay(capped, guest, response.json()["id"])).status_code == 200
    assert (await place(capped, guest, body)).status_code == 201  # the third place, unpaid
    refused = await place(capped, guest, body)
    assert refused.status_code == 409 and slug(refused) == "too-many-orders-in-slot", refused.text
    # Another slot, and another guest in this slot, are served.
    later = order_body(demo, items, ("CRO", 1), pickup_at=pickup(3, 13))
    assert (await place(capped, guest, later)).status_code == 201
    other = await sign_in(capped, notifier)
    assert (await place(capped, other, body)).status_code == 201


async def test_one_place_order_remains_and_it_takes_the_caps(services: Any) -> None:
    """Migration 0012 recreates 0010's place_order (the caps' signature) rather than adding
    a second overload beside it: the app's PLACE_ORDER resolves to exactly one function."""
    rows = await services.db.fetch(
        "SELECT pg_get_function_identity_arguments(oid) AS args FROM pg_proc "
        "WHERE proname = 'place_order'"
    )
    assert len(rows) == 1
    assert "p_unpaid_orders_per_guest integer, p_slot_places_per_guest integer" in rows[0]["args"]
    source = await services.db.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'place_order'")
    assert "loyalty_hold(" in source and "idempotency_claim(" in source
    assert "idempotency_finish(" in source and "too-many-orders-in-slot" in source

"""A request and a worker job, or two requests, resolving the same points at the same moment:
each interleaving is forced at the point where it used to go wrong, with the real job code and
the real database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from server.loyalty.jobs import void_timed_out_holds
from tests.api.helpers import (
    assert_books_balance,
    ledger_state,
    menu_items,
    order_body,
    pay,
    place,
    redis_state,
)
from tests.conftest import Client, Demo, GuestHandle, give_points


async def test_a_payment_that_loses_the_race_with_the_hold_timeout_is_refused(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The payment reads the order's hold while it is still open; the worker's hold-timeout
    job voids it before the payment posts it. The payment used to place the order anyway,
    with the points back in the guest's wallet: a free discount. Now it is refused like any
    payment after the window, and nothing of it is kept."""
    await give_points(client, demo, guest, 500)
    start = await ledger_state(services, guest.id)
    items = await menu_items(client, demo.locations["station"])
    order = (await place(client, guest, order_body(demo, items, ("SAL", 2), points=100))).json()
    assert await ledger_state(services, guest.id) == (start[0] - 100, 100)
    async with services.db.connection() as conn:  # the payment window has just passed
        hold_id = await conn.fetchval(
            "SELECT spend_transfer_id FROM orders WHERE id = $1", order["id"]
        )
        for table, column in (("transfers", "id"), ("open_holds", "transfer_id")):
            await conn.execute(
                f"UPDATE {table} SET timeout_at = now() - interval '1 second' WHERE {column} = $1",
                hold_id,
            )
    ledger = services.loyalty.ledger
    read_hold = ledger.pending
    voided: list[int] = []

    async def read_then_the_job_voids(conn: Any, transfer_id: Any) -> Any:
        hold = await read_hold(conn, transfer_id)
        if not voided:  # the payment's read (the job reads the hold through here too)
            voided.append(-1)
            # The worker's pass runs now, in its own task and transaction, and commits.
            voided[0] = await asyncio.create_task(void_timed_out_holds(services.loyalty, 500))
        return hold

    monkeypatch.setattr(ledger, "pending", read_then_the_job_voids)
    paid = await pay(client, guest, order["id"])
    monkeypatch.undo()
    assert voided and voided[0] >= 1
    assert paid.status_code == 409, paid.text
    assert paid.json()["type"].endswith("/order-expired")
    shown = (await client.get(f"/v1/orders/{order['id']}", headers=guest.headers)).json()
    assert shown["status"] == "awaiting_payment"  # not placed; the expiry job cancels it
    async with services.db.connection() as conn:
        payments = await conn.fetchval(
            "SELECT count(*) FROM payments WHERE order_id = $1", order["id"]
        )
    assert payments == 0  # the payment row rolled back with the refusal
    assert await ledger_state(services, guest.id) == start
    assert await redis_state(services, guest.id) in (None, start)
    await assert_books_balance(services, demo.brand_id)


def _reload_before_every_mirror(services: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent request reloads the wallet between each commit and its Redis mirror (a
    checkout's settle does, whenever Redis and PostgreSQL disagree)."""
    loyalty = services.loyalty
    mirror, reload = loyalty.mirror, loyalty.reload

    async def reload_first(guest_id: Any, *args: Any, **kwargs: Any) -> None:
        await reload(guest_id)
        await mirror(guest_id, *args, **kwargs)

    monkeypatch.setattr(loyalty, "mirror", reload_first)


async def test_a_credit_mirrored_after_a_reload_is_counted_once(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await services.loyalty.reload(guest.id)
    _reload_before_every_mirror(services, monkeypatch)
    await give_points(client, demo, guest, 75)  # a manager's adjustment: a credit
    expected = await ledger_state(services, guest.id)
    assert await redis_state(services, guest.id) == expected  # was 75 more than the ledger


async def test_a_post_mirrored_after_a_reload_is_counted_once(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await give_points(client, demo, guest, 500)
    await services.loyalty.reload(guest.id)
    items = await menu_items(client, demo.locations["station"])
    order = (await place(client, guest, order_body(demo, items, ("SAL", 2), points=100))).json()
    _reload_before_every_mirror(services, monkeypatch)
    assert (await pay(client, guest, order["id"])).status_code == 200
    expected = await ledger_state(services, guest.id)
    assert expected[1] == 0
    assert await redis_state(services, guest.id) == expected  # was 100 short


async def test_a_retry_of_a_refused_spend_with_the_same_key_is_held_in_redis_too(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal stores no response, so the client may retry with the same Idempotency-Key;
    Redis still has the first attempt's voided hold under the same transfer id and answers
    'exists' without reserving. The hold PostgreSQL then commits must reach Redis anyway."""
    import server.orders.sql

    await give_points(client, demo, guest, 500)
    await services.loyalty.reload(guest.id)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("SAL", 2), points=100)
    broken = server.orders.sql.PLACE_ORDER + " WHERE 1 / (version - version) = 1"
    monkeypatch.setattr(server.orders.sql, "PLACE_ORDER", broken)
    assert (await place(client, guest, body, key="same-key")).status_code == 500
    monkeypatch.undo()
    retried = await place(client, guest, body, key="same-key")
    assert retried.status_code == 201, retried.text
    expected = await ledger_state(services, guest.id)
    assert expected[1] == 100
    assert await redis_state(services, guest.id) == expected  # Redis had no hold: 100 over


async def test_a_duplicate_refused_after_its_twin_committed_does_not_void_the_twins_hold(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """Two requests with one Idempotency-Key share a transfer id. When one commits the hold
    and the other is refused (the key is taken), the refused one reloads the wallet voiding
    'its' hold first: that is the committed hold. Once Redis had the ledger's version (the
    twin's own settle reloads it), the void was kept and the load skipped, and Redis lost
    the hold (seen as a flaky test_concurrent_duplicates_have_one_effect)."""
    items = await menu_items(client, demo.locations["station"])
    await services.loyalty.reload(guest.id)
    placed = await place(client, guest, order_body(demo, items, ("ESP", 1), points=40), "twin")
    assert placed.status_code == 201, placed.text
    expected = await ledger_state(services, guest.id)
    assert expected[1] == 40
    async with services.db.connection() as conn:
        transfer_id = await conn.fetchval(
            "SELECT spend_transfer_id FROM orders WHERE id = $1", uuid.UUID(placed.json()["id"])
        )
    await services.loyalty.reload(guest.id)  # the twin's settle: Redis at the ledger's version
    await services.loyalty.reload(guest.id, void_first=(transfer_id,))  # the refused one's
    assert await redis_state(services, guest.id) == expected  # was (100, 0): the hold lost

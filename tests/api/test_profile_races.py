"""Guest profiles folded forward by concurrent visits (issue 20): two first visits at once
both count."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.counter.model import habits_of
from tests.api.helpers import advance, menu_items, order_body, pay, place
from tests.conftest import Client, Demo, sign_in


async def _ready_order(client: Client, demo: Demo, guest: Any, items: Any) -> uuid.UUID:
    placed = await place(client, guest, order_body(demo, items, ("CRO", 1)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    assert (await pay(client, guest, order_id)).status_code == 200
    await advance(client, demo, order_id, "accepted", "preparing", "ready")
    return uuid.UUID(order_id)


async def test_two_first_visits_at_once_both_count(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    """Two orders of a guest without a profile row complete in overlapping transactions. The
    second must wait for the first and fold onto its row; it used to read no row, count its
    visit as the first, and overwrite the first one's row."""
    guest = await sign_in(client, notifier)
    items = await menu_items(client, demo.locations["station"])
    first, second = [await _ready_order(client, demo, guest, items) for _ in range(2)]
    async with services.db.connection() as conn:
        assert (
            await conn.fetchrow("SELECT 1 FROM guest_profiles WHERE guest_id = $1", guest.id)
            is None
        )

    async def complete(conn: Any, order_id: uuid.UUID) -> None:
        await conn.execute("UPDATE orders SET status = 'completed' WHERE id = $1", order_id)
        await services.orders.lifecycle.on_completed(conn, order_id)

    started = asyncio.Event()
    pid: list[int] = []

    async def later() -> None:
        async with services.db.transaction() as conn:
            pid.append(conn.get_server_pid())
            started.set()
            await complete(conn, second)

    async with services.db.connection() as conn:
        async with conn.transaction():
            await complete(conn, first)
            racing = asyncio.create_task(later())
            await started.wait()
            # Commit only once the second completion is held up by the first one's row.
            for _ in range(2_000):
                waiting = await conn.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid[0]
                )
                if waiting or racing.done():
                    break
                await asyncio.sleep(0.005)
        await racing
        row = await conn.fetchrow("SELECT * FROM guest_profiles WHERE guest_id = $1", guest.id)
    assert row["visits_total"] == 2
    assert habits_of(row, datetime.now(UTC)).visits_30d == 2
    assert len(row["recent_visits"]) == 2

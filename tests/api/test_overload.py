"""An overloaded or stuck database answers 503 with Retry-After, never 500, and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from server.app import create_app
from server.auth.notifier import RecordingNotifier
from server.infra.db import connect_once
from server.lifespan import lifespan
from server.seed.demo import PROGRAM
from server.settings import Settings
from tests.api.helpers import ledger_state, menu_items, place, redis_state
from tests.conftest import Client, sign_in


@pytest.fixture
async def tight(settings: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    """The app with one pooled connection, a short acquire timeout and statement timeout."""
    small = msgspec.structs.replace(
        settings,
        db_pool_min=1,
        db_pool_max=1,
        db_acquire_timeout_s=0.3,
        db_statement_timeout_ms=500,
    )
    app = create_app(small, notifier=notifier)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with Client(transport=transport, base_url="http://testserver", timeout=30) as client:
            client.app = app
            yield client


async def test_an_exhausted_pool_is_a_503_with_retry_after(
    tight: Client, notifier: RecordingNotifier
) -> None:
    guest = await sign_in(tight, notifier)
    pool = tight.app.state.services.db.pool
    held = await pool.acquire()
    try:
        response = await tight.get("/v1/me/wallet", headers=guest.headers)
    finally:
        await pool.release(held)
    assert response.status_code == 503
    assert response.json()["type"].endswith("/database-busy")
    assert response.headers["retry-after"] == "1"
    assert (await tight.get("/v1/me/wallet", headers=guest.headers)).status_code == 200


async def test_a_stuck_checkout_times_out_as_503_and_leaves_nothing(
    tight: Client, notifier: RecordingNotifier, settings: Settings
) -> None:
    services: Any = tight.app.state.services
    guest = await sign_in(tight, notifier)
    station = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'station'")
    items = await menu_items(tight, station)
    body = {
        "location_id": str(station),
        "lines": [{"item_id": items["AVO"]["id"], "quantity": 1}],
        "points_to_spend": 50,
    }
    # Another session holds the guest's account row, so the guarded hold cannot finish.
    blocker = await connect_once(settings.database_url or "")
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE guest_id = $1 FOR UPDATE", guest.id)
        response = await place(tight, guest, body)
        await transaction.rollback()
    finally:
        await blocker.close()
    assert response.status_code == 503, response.text
    assert response.json()["type"].endswith("/database-busy")
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    assert await redis_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    assert (
        await services.db.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id) == 0
    )

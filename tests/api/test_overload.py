"""An overloaded or stuck database answers 503 with Retry-After, never 500, and writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from server.app import create_app
from server.auth.notifier import RecordingNotifier
from server.infra.db import connect_once
from server.lifespan import lifespan
from server.orders.checkout import PlaceOrderCall, PlaceOrderStatement
from server.seed.demo import PROGRAM
from server.settings import Settings
from tests.api.helpers import ledger_state, menu_items, place, redis_state
from tests.api.staff_support import bearer, qr_of
from tests.conftest import Client, Demo, sign_in


@pytest.fixture
async def tight(settings: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    """The app with one pooled connection, one checkout at a time, a short acquire timeout and
    statement timeout."""
    small = msgspec.structs.replace(
        settings,
        db_pool_min=1,
        db_pool_max=1,
        db_acquire_timeout_s=0.3,
        db_statement_timeout_ms=500,
        checkouts_in_flight=1,
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


async def _station_body(client: Client, services: Any, points: int) -> dict[str, Any]:
    station = await services.db.fetchval("SELECT id FROM locations WHERE slug = 'station'")
    items = await menu_items(client, station)
    return {
        "location_id": str(station),
        "lines": [{"item_id": items["AVO"]["id"], "quantity": 1}],
        "points_to_spend": points,
    }


async def test_checkouts_beyond_the_in_flight_limit_wait_then_get_503(
    tight: Client, notifier: RecordingNotifier
) -> None:
    """A checkout waits for its turn; one that waits longer than the acquire timeout is told
    to come back (503 with Retry-After) and wrote nothing."""
    services: Any = tight.app.state.services
    guest = await sign_in(tight, notifier)
    body = await _station_body(tight, services, 50)
    turn = services.orders.checkout._in_flight
    await turn.acquire()  # a checkout that never finishes holds the only turn
    try:
        refused = await place(tight, guest, body, key="waits-too-long")
    finally:
        turn.release()
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("/database-busy")
    assert refused.headers["retry-after"] == "1"
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    placed = await place(tight, guest, body, key="waits-too-long")
    assert placed.status_code == 201, placed.text


async def test_a_checkout_that_commits_after_the_client_gave_up_is_not_lost_in_redis(
    client: Client,
    notifier: RecordingNotifier,
    services: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request stops waiting (a client-side timeout) while PostgreSQL is still working on
    the checkout, which then commits: Redis must not end up without the hold PostgreSQL has.
    (Voiding on every failure lost it: seen under overload in issue 5.)"""
    guest = await sign_in(client, notifier)
    body = await _station_body(client, services, 70)
    await services.loyalty.reload(guest.id)  # Redis holds the wallet: the reserve is Redis's
    assert await redis_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    real = services.orders.checkout.statement
    blocker = await connect_once(settings.database_url or "")
    late = await connect_once(settings.database_url or "")
    still_working: list[asyncio.Task[Any]] = []

    class GivesUpWhilePostgresWorks(PlaceOrderStatement):
        async def run(self, conn: Any, call: PlaceOrderCall) -> Any:
            # The statement runs on its own connection and goes on after the request gave up.
            still_working.append(asyncio.create_task(real.run(late, call)))
            await asyncio.sleep(0.2)  # it now waits for the account row the blocker holds
            raise TimeoutError("the answer did not arrive in time")

    # The checkout's statement is injected: this test puts a fake one in its place.
    monkeypatch.setattr(services.orders.checkout, "statement", GivesUpWhilePostgresWorks())
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM accounts WHERE guest_id = $1 FOR UPDATE", guest.id)
        failed = await place(client, guest, body, key="in-doubt")
        await transaction.rollback()
        await still_working[0]  # PostgreSQL commits the checkout after all
    finally:
        await blocker.close()
        await late.close()
    assert failed.status_code >= 500
    expected = (PROGRAM.welcome_bonus_points - 70, 70)
    assert await ledger_state(services, guest.id) == expected
    # In doubt, Redis dropped the wallet rather than guess (voiding lost the committed hold).
    assert await redis_state(services, guest.id) is None
    monkeypatch.undo()
    again = await place(client, guest, body, key="in-doubt")
    assert again.status_code == 201, again.text
    assert await redis_state(services, guest.id) == expected
    assert await ledger_state(services, guest.id) == expected


async def test_a_burst_of_scans_on_a_cold_cache_is_served_not_refused(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any, settings: Settings
) -> None:
    """More scans at once than the pool has connections, on a process whose locations cache is
    still empty (just started). Each scan used to hold its connection while the cache fetched
    the locations with a second one, so none ever came back: the process stood still until
    the acquire timeout and answered 503 (seen in the 300/s scan load test after a restart)."""
    guest = await sign_in(client, notifier)
    code = await qr_of(services, guest.id)
    small = msgspec.structs.replace(
        settings, db_pool_min=1, db_pool_max=2, db_acquire_timeout_s=2.0
    )
    app = create_app(small, notifier=notifier)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with Client(transport=transport, base_url="http://testserver", timeout=30) as cold:
            answers = await asyncio.gather(
                *(
                    cold.post(
                        "/v1/kiosk/scan", json={"code": code}, headers=bearer(demo.staff["barista"])
                    )
                    for _ in range(8)
                )
            )
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    assert {a.json()["guest"]["id"] for a in answers} == {str(guest.id)}

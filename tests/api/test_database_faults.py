"""PostgreSQL ends the app's sessions while checkouts are in flight (a restart, a failover, an
administrator's pg_terminate_backend): each checkout is served or refused 503 with Retry-After,
never 500; a retry with the same key is served once; nothing is half-written, and Redis does
not keep a hold PostgreSQL does not have."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from server.auth.notifier import RecordingNotifier
from server.infra.db import connect_once
from server.seed.demo import PROGRAM
from server.settings import Settings
from tests.api.helpers import (
    assert_books_balance,
    ledger_state,
    menu_items,
    order_body,
    place,
    redis_state,
)
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in

WELCOME = PROGRAM.welcome_bonus_points

GUESTS = 12
ROUNDS = 4


async def _end_the_apps_sessions(settings: Settings) -> int:
    """pg_terminate_backend every session of the app (application_name 'regulars')."""
    admin = await connect_once(settings.database_url or "")
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'regulars' AND pid <> pg_backend_pid()) ended"
            )
        )
    finally:
        await admin.close()


async def test_sessions_ended_mid_checkout_are_refused_503_and_a_retry_is_served_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any, settings: Settings
) -> None:
    guests = [await sign_in(client, notifier) for _ in range(GUESTS)]
    for guest in guests:
        await give_points(client, demo, guest, 10_000)
        await services.loyalty.reload(guest.id)  # Redis holds the wallet: spends reserve there
    items = await menu_items(client, demo.locations["station"])
    tomorrow = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=1)
    sent = 0

    def body() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        # Spread over slots so that no pickup slot fills up.
        pickup_at = (tomorrow + timedelta(minutes=5 * (sent % 200))).isoformat()
        return order_body(demo, items, ("CRO", 1), points=5, pickup_at=pickup_at)

    answers: list[tuple[GuestHandle, str, dict[str, Any], httpx.Response]] = []
    stop = asyncio.Event()

    async def keep_ordering(guest: GuestHandle) -> None:
        while not stop.is_set():
            key, sent_body = str(uuid.uuid4()), body()
            answers.append((guest, key, sent_body, await place(client, guest, sent_body, key)))

    orderers = [asyncio.create_task(keep_ordering(g)) for g in guests]
    try:
        ended = 0
        for _ in range(ROUNDS):
            await asyncio.sleep(0.3)
            ended += await _end_the_apps_sessions(settings)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*orderers)
    assert ended >= ROUNDS  # each round ended at least one of the app's sessions

    statuses = Counter(response.status_code for *_, response in answers)
    assert set(statuses) <= {201, 503}, statuses
    refused = [(g, k, b, r) for g, k, b, r in answers if r.status_code == 503]
    assert refused, f"no checkout was caught by the ended sessions: {statuses}"
    for *_, response in refused:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"].endswith("/database-unavailable"), response.text
        assert response.headers["retry-after"] == "2"

    # A retry with the same key is served, and served once: a replay returns the same order.
    for guest, key, sent_body, _ in refused:
        retried = await place(client, guest, sent_body, key)
        assert retried.status_code == 201, retried.text
        again = await place(client, guest, sent_body, key)
        assert again.status_code == 201 and again.json()["id"] == retried.json()["id"]

    placed = statuses[201] + len(refused)
    async with services.db.connection() as conn:
        orders = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE guest_id = ANY($1::uuid[])", [g.id for g in guests]
        )
    assert orders == placed  # one order per key: none lost, none doubled, none half-written

    for guest in guests:
        pending = 5 * sum(1 for g, *_ in answers if g is guest)  # every order awaits payment
        expected = (WELCOME + 10_000 - pending, pending)
        assert await ledger_state(services, guest.id) == expected
        mirrored = await redis_state(services, guest.id)
        assert mirrored in (None, expected), (guest.id, mirrored, expected)
    await assert_books_balance(services, demo.brand_id)


async def test_a_refused_checkout_whose_wallet_cannot_be_reloaded_drops_it_from_redis(
    client: Client,
    guest: GuestHandle,
    demo: Demo,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checkout fails after Redis reserved its points, and the reload that should void
    that hold cannot read PostgreSQL either (its session was ended too): Redis drops the
    wallet rather than keep a hold PostgreSQL does not have, and the caller sees the
    checkout's own failure, not the reload's."""
    import server.orders.sql

    await services.loyalty.reload(guest.id)
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    broken = server.orders.sql.PLACE_ORDER + " WHERE 1 / (version - version) = 1"
    monkeypatch.setattr(server.orders.sql, "PLACE_ORDER", broken)

    async def session_ended(*_: Any) -> None:
        raise asyncpg.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        )

    monkeypatch.setattr(services.loyalty.ledger, "snapshot", session_ended)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CRO", 1), points=60)
    failed = await place(client, guest, body)
    assert failed.status_code == 500 and failed.json()["type"].endswith("/internal-error")
    assert await redis_state(services, guest.id) is None  # dropped, not left holding 60
    monkeypatch.undo()
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert (await place(client, guest, body)).status_code == 201
    assert await redis_state(services, guest.id) == (WELCOME - 60, 60)

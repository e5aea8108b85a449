"""The server on a real 3-master Redis Cluster (DESIGN §4, §8), started like `regulars dev`'s
Redis: the same binary, on loopback, by the test session.

Only the URL changes: the app asks the node whether it is a cluster. The ledger's concurrency
test, the checkout journey and the live queue run unchanged against it (imported from their
own modules, with this module's ``settings``), and a master killed in the middle of a stream of
checkouts neither creates nor loses a point; after it restarts, `regulars reconcile` repairs
what Redis lost.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from kiosk.live import LiveQueue
from server.infra.db import connect_once
from server.infra.embedded import EmbeddedRedisCluster
from server.infra.migrate import apply_migrations
from server.infra.redis import ClusterLine
from server.loyalty.hot import wallet_keys
from server.seed.demo import seed_demo
from server.settings import Settings
from tests.api.helpers import (
    assert_books_balance,
    ledger_state,
    menu_items,
    order_body,
    place,
    redis_state,
)
from tests.api.test_checkout import (  # run here unchanged, against the cluster
    test_fifty_concurrent_spends_from_one_wallet,
    test_full_journey,
)
from tests.conftest import (
    TEST_JWT_SECRET,
    TEST_LIMITS,
    Client,
    Demo,
    LiveServer,
    Stack,
    give_points,
    sign_in,
)
from tests.integration.test_kiosk_live_queue import FAST, Seen, place_and_pay, station_id, until

__all__ = ["test_fifty_concurrent_spends_from_one_wallet", "test_full_journey"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedRedisCluster]:
    nodes = EmbeddedRedisCluster(Path(tempfile.mkdtemp(prefix="regulars-cluster-")))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def cluster_database(stack: Stack) -> str:
    """A database of its own on the session's PostgreSQL, migrated and seeded.

    The cluster's workers and the session's other live servers must not share an outbox:
    a worker publishing on the single Redis would take the cluster's live events.
    """
    name = f"regulars_cluster_{uuid.uuid4().hex[:8]}"
    admin_url = stack.running.database_url.rsplit("/", 1)[0] + "/postgres"
    url = stack.running.database_url.rsplit("/", 1)[0] + f"/{name}"

    async def prepare() -> None:
        admin = await connect_once(admin_url)
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        conn = await connect_once(url)
        try:
            await apply_migrations(conn)
            await seed_demo(conn)
        finally:
            await conn.close()

    asyncio.run(prepare())
    return url


@pytest.fixture(scope="module")
def settings(stack: Stack, cluster: EmbeddedRedisCluster, cluster_database: str) -> Settings:
    """A PostgreSQL database of its own, the cluster's first node as the only Redis address."""
    from server.settings import load_settings

    return load_settings(
        environ={},
        database_url=cluster_database,
        redis_url=cluster.url,
        data_dir=str(stack.embedded.data_dir),
        env="test",
        jwt_secret=TEST_JWT_SECRET,
        redis_retry_after_s=0.2,
        db_pool_max=20,
        otp_sends_per_hour=1000,
        **TEST_LIMITS,
    )


async def test_the_app_found_the_cluster_by_asking_one_node(services: Any) -> None:
    assert isinstance(services.gate.client, RedisCluster)
    assert isinstance(services.gate.line, ClusterLine)
    assert await services.gate.ping()


async def test_wallets_spread_over_every_master(
    client: Client, notifier: Any, services: Any, cluster: EmbeddedRedisCluster
) -> None:
    """Guests land on all three masters, each guest's two keys on one of them."""
    masters = {("127.0.0.1", port) for port in cluster.ports}
    owners = set()
    # Random ids: 60 guests leave a master without one with a chance of about 1e-10.
    for _ in range(60):
        guest = await sign_in(client, notifier)
        slots = {key_slot(key.encode()) for key in wallet_keys(guest.id)}
        assert len(slots) == 1
        owners.add(await _owner(services, guest.id))
        if owners == masters:
            break
    assert owners == masters


async def _owner(services: Any, guest_id: uuid.UUID) -> tuple[str, int]:
    line: ClusterLine = services.gate.line
    slot_map = await line._map()
    return slot_map[key_slot(wallet_keys(guest_id)[0].encode())]


async def test_a_master_killed_mid_run_creates_and_loses_no_points(
    client: Client,
    notifier: Any,
    demo: Demo,
    services: Any,
    settings: Settings,
    cluster: EmbeddedRedisCluster,
) -> None:
    guests = [await sign_in(client, notifier) for _ in range(9)]
    for guest in guests:
        await give_points(client, demo, guest, 1000)
    start = {guest.id: await ledger_state(services, guest.id) for guest in guests}
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CIN", 4), points=100)
    victim = await _owner(services, guests[0].id)
    accepted: dict[uuid.UUID, int] = {guest.id: 0 for guest in guests}

    async def stream(guest: Any, rounds: int) -> int:
        done = 0
        for _ in range(rounds):
            response = await place(client, guest, body)
            assert response.status_code in (201, 409, 503), response.text
            if response.status_code == 201:
                accepted[guest.id] += 1
                done += 1
        return done

    first = asyncio.gather(*(stream(guest, 6) for guest in guests))
    await asyncio.sleep(0.3)
    cluster.kill(victim[1])  # in the middle of the first stream
    await first
    during = await asyncio.gather(*(stream(guest, 2) for guest in guests))
    assert sum(during) > 0  # checkouts go on while a third of the slots have no master
    cluster.restart(victim[1])
    await asyncio.gather(*(stream(guest, 1) for guest in guests))

    # PostgreSQL, the source of truth, holds exactly the accepted orders' points.
    for guest in guests:
        spendable, pending = start[guest.id]
        held = 100 * accepted[guest.id]
        assert await ledger_state(services, guest.id) == (spendable - held, pending + held)
    assert sum(accepted.values()) > 0
    await assert_books_balance(services, demo.brand_id)

    # The restarted master came back empty; `regulars reconcile` makes Redis agree again.
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server", "reconcile", "--grace-s", "0"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("REGULARS_")},
            "REGULARS_DATABASE_URL": settings.database_url or "",
            "REGULARS_REDIS_URL": settings.redis_url or "",
            "REGULARS_JWT_SECRET": TEST_JWT_SECRET,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wallet(s) repaired" in result.stdout
    for guest in guests:
        hot = await redis_state(services, guest.id)
        assert hot is None or hot == await ledger_state(services, guest.id), guest.id


def test_live_queue_on_the_cluster(settings: Settings) -> None:
    """An order paid through the API reaches a kiosk's live queue over the cluster's pub/sub."""
    server = LiveServer(settings)
    server.start()
    try:
        station = station_id(server)
        token = server.staff_token("barista")
        ws_url = (
            server.base_url.replace("http", "ws")
            + f"/v1/locations/{station}/queue/live?token={token}"
        )
        seen = Seen()

        async def refresh() -> bool:
            return True

        async def scenario() -> str:
            queue = LiveQueue(lambda: ws_url, seen.on_event, seen.on_connected, refresh, FAST)
            task = asyncio.create_task(queue.run())
            try:
                # Generous bounds: the whole suite shares two cores with this live server.
                await until(lambda: seen.connected[-1:] == [True], timeout_s=60)
                order_id = await asyncio.to_thread(place_and_pay, server, station)
                await until(lambda: seen.has_order(order_id), timeout_s=60)
            finally:
                task.cancel()
            return order_id

        order_id = asyncio.run(scenario())
        placed = [e for e in seen.events if e.order.id == uuid.UUID(order_id)]
        assert placed[0].event == "order.placed"
    finally:
        server.stop()

"""Redis is a cache that can be lost (DESIGN §4): flushed, stopped, paused, or left with an
orphan hold by a process that died between the Redis reserve and the PostgreSQL commit."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.loyalty.hot import wallet_keys
from server.orders.checkout import PlaceOrderCall, PlaceOrderStatement
from server.seed.demo import PROGRAM
from tests.api.helpers import (
    assert_books_balance,
    ledger_state,
    menu_items,
    pay,
    place,
    redis_state,
)
from tests.conftest import Client, Demo, GuestHandle, Stack, give_points, new_phone, sign_in

WELCOME = PROGRAM.welcome_bonus_points


async def order_body(
    client: Client, demo: Demo, points: int, sku: str = "AVO", quantity: int = 1
) -> dict[str, Any]:
    items = await menu_items(client, demo.locations["station"])
    return {
        "location_id": str(demo.locations["station"]),
        "lines": [{"item_id": items[sku]["id"], "quantity": quantity}],
        "points_to_spend": points,
    }


async def wait_for_redis(services: Any) -> None:
    for _ in range(100):
        if await services.gate.ping():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("redis did not come back")


async def test_flushed_redis_reloads_wallets(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    body = await order_body(client, demo, 40)
    assert (await place(client, guest, body)).status_code == 201
    await services.gate.client.flushall()
    assert await redis_state(services, guest.id) is None
    response = await place(client, guest, body)
    assert response.status_code == 201, response.text
    assert await ledger_state(services, guest.id) == (WELCOME - 80, 80)
    assert await redis_state(services, guest.id) == (WELCOME - 80, 80)


async def test_checkout_survives_redis_down_and_recovers(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, stack: Stack
) -> None:
    body = await order_body(client, demo, 30)
    assert (await place(client, guest, body)).status_code == 201
    stack.stop_redis()
    try:
        response = await place(client, guest, body)
        assert response.status_code == 201, response.text
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ok", "postgres": "ok", "redis": "degraded"}
        # The PostgreSQL guard still refuses overspending without Redis.
        refused = await place(client, guest, await order_body(client, demo, 100, "SAL", 5))
        assert refused.status_code == 422 and refused.json()["type"].endswith(
            "/insufficient-points"
        )
        assert await ledger_state(services, guest.id) == (WELCOME - 60, 60)
    finally:
        stack.start_redis()
    await wait_for_redis(services)
    assert (await client.get("/readyz")).json()["redis"] == "ok"
    assert (await place(client, guest, body)).status_code == 201
    assert await redis_state(services, guest.id) == (WELCOME - 90, 90)
    await assert_books_balance(services, demo.brand_id)


async def test_the_first_sign_in_after_a_redis_restart_is_served(
    client: Client, services: Any, stack: Stack
) -> None:
    """A restart closes every pooled connection; the next call on one reconnects instead of
    failing, and Redis is not marked down (which would refuse sign-ins for a while)."""
    assert (await client.post("/v1/auth/otp", json={"phone": new_phone()})).status_code == 202
    stack.stop_redis()
    stack.start_redis()
    response = await client.post("/v1/auth/otp", json={"phone": new_phone()})
    assert response.status_code == 202, response.text
    assert not services.gate.degraded
    assert (await client.get("/readyz")).json()["redis"] == "ok"


async def test_stale_wallet_after_an_outage_is_dropped(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, settings: Any
) -> None:
    body = await order_body(client, demo, 30)
    assert (await place(client, guest, body)).status_code == 201
    assert await redis_state(services, guest.id) == (WELCOME - 30, 30)
    # Redis stops answering but keeps its (soon stale) data, as in a network partition.
    admin = aioredis.from_url(settings.redis_url)
    await admin.execute_command("CLIENT", "PAUSE", "2500", "ALL")
    try:
        assert (await place(client, guest, body)).status_code == 201
    finally:
        await asyncio.sleep(2.6)
        await admin.aclose()
    await wait_for_redis(services)
    assert (await place(client, guest, body)).status_code == 201
    assert await ledger_state(services, guest.id) == (WELCOME - 90, 90)
    assert await redis_state(services, guest.id) == (WELCOME - 90, 90)


async def _crash_after_the_reserve(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guest has 400 points; a checkout of 100 "dies" after the Redis reserve: PostgreSQL
    never commits, and nothing after the crash point runs (no void, no reload)."""
    await give_points(client, demo, guest, 400 - WELCOME)

    class Crashes(PlaceOrderStatement):
        async def run(self, conn: Any, call: PlaceOrderCall) -> Any:
            raise RuntimeError("injected crash before commit")

    async def nothing_after_crash(*_: Any, **__: Any) -> None:
        return None

    # The checkout's statement is injected (a fake that fails before writing), and the process
    # "dies" there: the loyalty service's settle step, public, does nothing.
    monkeypatch.setattr(services.orders.checkout, "statement", Crashes())
    monkeypatch.setattr(services.loyalty, "settle_admission", nothing_after_crash)
    crashed = await place(client, guest, await order_body(client, demo, 100, "SAL", 4))
    assert crashed.status_code == 500 and crashed.json()["type"].endswith("/internal-error")
    monkeypatch.undo()
    assert await ledger_state(services, guest.id) == (400, 0)
    assert await redis_state(services, guest.id) == (300, 100)


async def _spend_all(client: Client, demo: Demo, guest: GuestHandle) -> Any:
    return await place(client, guest, await order_body(client, demo, 400, "GC50", 1))


async def test_reconcile_voids_the_orphan_of_a_crash(
    client: Client,
    guest: GuestHandle,
    demo: Demo,
    services: Any,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _crash_after_the_reserve(client, guest, demo, services, monkeypatch)
    stdout = await _regulars_reconcile(settings)
    assert f"{guest.id}: voided orphan hold" in stdout
    assert await redis_state(services, guest.id) == (400, 0)
    spent = await _spend_all(client, demo, guest)
    assert spent.status_code == 201, spent.text
    assert await ledger_state(services, guest.id) == (0, 400)


async def _regulars_reconcile(settings: Any) -> str:
    """Run `regulars reconcile --grace-s 0` as an operator would; returns what it printed."""
    env = {
        **os.environ,
        "REGULARS_DATABASE_URL": settings.database_url,
        "REGULARS_REDIS_URL": settings.redis_url,
        "REGULARS_JWT_SECRET": settings.jwt_secret,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "server", "reconcile", "--grace-s", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_regulars_reconcile_finds_holds_that_differ_while_the_sums_agree(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, settings: Any
) -> None:
    """An orphan hold and a missing hold of the same points leave the sums equal, which is
    all the worker's pass compares; `regulars reconcile` reads every wallet in full."""
    await give_points(client, demo, guest, 400 - WELCOME)
    placed = await place(client, guest, await order_body(client, demo, 100, "SAL", 4))
    assert placed.status_code == 201, placed.text
    async with services.db.connection() as conn:
        hold_id = await conn.fetchval(
            "SELECT h.transfer_id FROM open_holds h JOIN accounts a ON a.id = h.account_id"
            " WHERE a.guest_id = $1",
            guest.id,
        )
    orphan_id = uuid.uuid4()
    holds_key = wallet_keys(guest.id)[1]
    await services.gate.client.hdel(holds_key, str(hold_id))
    await services.gate.client.hset(holds_key, str(orphan_id), "100|p|0")
    assert await redis_state(services, guest.id) == await ledger_state(services, guest.id)

    stdout = await _regulars_reconcile(settings)
    assert f"{guest.id}: voided orphan hold {orphan_id} (100 points)" in stdout
    assert f"restored hold {hold_id} (100 points)" in stdout
    hot = await services.loyalty.hot.read(guest.id)
    assert hot is not None
    open_holds = {key for key, value in hot[1].items() if value.split("|")[1] == "p"}
    assert open_holds == {str(hold_id)}


async def test_the_worker_reads_in_full_only_the_wallets_whose_sums_differ(
    client: Client,
    guest: GuestHandle,
    demo: Demo,
    services: Any,
    notifier: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy guest's wallet holds thousands of resolved transfers: the worker reading every
    wallet of its page in full each pass stalled checkouts at the morning rush. A pass now
    compares the sums of a page and reads in full only a wallet that differs."""
    from server.loyalty.reconcile import reconcile_page

    other = await sign_in(client, notifier)
    for handle in (guest, other):
        await services.loyalty.reload(handle.id)
        assert await redis_state(services, handle.id) == (WELCOME, 0)
    await services.gate.client.hset(wallet_keys(guest.id)[0], "posted", WELCOME + 500)

    read_in_full: list[uuid.UUID] = []
    read = services.loyalty.hot.read

    async def counted(guest_id: uuid.UUID) -> Any:
        read_in_full.append(guest_id)
        return await read(guest_id)

    monkeypatch.setattr(services.loyalty.hot, "read", counted)
    repairs, after = [], None
    while True:
        page, after = await reconcile_page(services.loyalty, 0, after, 500)
        repairs += page
        if after is None:
            break
    assert guest.id in read_in_full and other.id not in read_in_full
    fixed = [repair.what for repair in repairs if repair.guest_id == guest.id]
    assert fixed == [[f"posted {WELCOME + 500} -> {WELCOME}"]]
    assert await redis_state(services, guest.id) == (WELCOME, 0)


async def test_the_worker_drops_a_regulars_day_old_markers(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """Each resolved transfer left a marker in the wallet's holds hash for as long as the
    wallet stayed in Redis (each spend renews its TTL). The worker's pass drops old ones."""
    from server.loyalty.reconcile import reconcile_page

    await services.loyalty.reload(guest.id)
    old = {str(uuid.uuid4()): "5|P|1000" for _ in range(100)}
    await services.gate.client.hset(wallet_keys(guest.id)[1], mapping=old)
    after = None
    while True:
        _, after = await reconcile_page(services.loyalty, 30, after, 500)
        if after is None:
            break
    hot = await services.loyalty.hot.read(guest.id)
    assert hot is not None and not set(old) & set(hot[1])
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    placed = await place(client, guest, await order_body(client, demo, 10))
    assert placed.status_code == 201, placed.text
    assert await redis_state(services, guest.id) == (WELCOME - 10, 10)


async def test_a_retry_after_its_marker_was_dropped_replays_and_holds_nothing(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """Once the marker of a paid checkout's hold is dropped, Redis no longer knows the
    transfer: a retry with the same key reserves again, PostgreSQL answers with the stored
    order, and the new Redis hold is voided."""
    from server.loyalty.reconcile import MARKER_AGE_MS, PRUNE_ABOVE

    body = await order_body(client, demo, 10)
    placed = await place(client, guest, body, key="paid-long-ago")
    assert placed.status_code == 201, placed.text
    assert (await pay(client, guest, placed.json()["id"])).status_code == 200
    holds_key = wallet_keys(guest.id)[1]
    aged = {key: value.rsplit("|", 1)[0] + "|1000" for key, value in
            (await services.gate.client.hgetall(holds_key)).items()}  # fmt: skip
    filler = {str(uuid.uuid4()): "5|C|1000" for _ in range(PRUNE_ABOVE)}
    await services.gate.client.hset(holds_key, mapping={**aged, **filler})
    assert await services.loyalty.hot.prune([guest.id], MARKER_AGE_MS, PRUNE_ABOVE) > 0
    assert await services.gate.client.hlen(holds_key) == 0
    settled = await ledger_state(services, guest.id)
    assert await redis_state(services, guest.id) == settled

    again = await place(client, guest, body, key="paid-long-ago")
    assert again.status_code == 201 and again.json()["id"] == placed.json()["id"]
    assert await ledger_state(services, guest.id) == settled
    assert await redis_state(services, guest.id) == settled


async def test_the_worker_voids_the_orphan_of_a_crash_a_page_at_a_time(
    client: Client,
    guest: GuestHandle,
    demo: Demo,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing scheduled `regulars reconcile`: the orphan stayed in Redis, and in the balance
    the guest and the counter see. The worker now compares a page of wallets per pass."""
    from server.loyalty.reconcile import RollingReconcile
    from server.worker import run_once

    await _crash_after_the_reserve(client, guest, demo, services, monkeypatch)
    young = RollingReconcile(services.loyalty, grace_s=60, batch_size=50)
    aged = RollingReconcile(services.loyalty, grace_s=0, batch_size=50)
    passes = []
    for _ in range(10_000):  # pages of 50 until this guest's wallet is compared
        passes.append(await run_once(services, slow=False, reconciler=young))
        if await redis_state(services, guest.id) != (300, 100):
            break
        passes.append(await run_once(services, slow=False, reconciler=aged))
        if await redis_state(services, guest.id) != (300, 100):
            break
    assert all("reconciled_wallets" in done for done in passes)
    # Only the pass that allows no grace voids it: a younger hold may be a checkout in flight.
    assert await redis_state(services, guest.id) == (400, 0)
    assert f"wallet {guest.id} repaired from the ledger: voided orphan hold" in caplog.text


async def test_an_orphan_hold_does_not_lock_the_guest_out_of_their_points(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses the 400 points (it still holds the crashed 100), but the ledger has them:
    PostgreSQL decides, without waiting for `regulars reconcile`, and the wallet Redis had
    wrong is dropped. A spend the ledger cannot cover is still refused, with the ledger's
    figure."""
    await _crash_after_the_reserve(client, guest, demo, services, monkeypatch)
    spent = await _spend_all(client, demo, guest)
    assert spent.status_code == 201, spent.text
    assert await ledger_state(services, guest.id) == (0, 400)
    assert await redis_state(services, guest.id) is None  # to be loaded afresh on next use
    wallet = await client.get("/v1/me/wallet", headers=guest.headers)
    assert wallet.json()["points_available"] == 0

    refused = await place(client, guest, await order_body(client, demo, 10))
    assert refused.status_code == 422, refused.text
    assert refused.json()["points_available"] == 0
    assert await redis_state(services, guest.id) == (0, 400)
    # Once Redis has the wallet right, its refusal is confirmed by the ledger as well.
    again = await place(client, guest, await order_body(client, demo, 10))
    assert again.status_code == 422 and again.json()["points_available"] == 0


async def test_a_failure_after_the_hold_leaves_no_redis_hold(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout's statement fails after PostgreSQL took the hold (here: once place_order
    has written everything, the row it returns hits a division by zero): both stores end as
    they started (PostgreSQL by rollback, Redis by the void of the admission)."""
    import server.orders.sql

    broken = server.orders.sql.PLACE_ORDER + " WHERE 1 / (version - version) = 1"
    monkeypatch.setattr(server.orders.sql, "PLACE_ORDER", broken)
    failed = await place(client, guest, await order_body(client, demo, 60))
    assert failed.status_code == 500
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    monkeypatch.undo()
    assert (await place(client, guest, await order_body(client, demo, 60))).status_code == 201
    assert await ledger_state(services, guest.id) == (WELCOME - 60, 60)


async def test_a_failure_after_a_redemption_hold_leaves_no_redis_hold(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.counter.points

    async def broken_audit(*_: Any, **__: Any) -> None:
        raise RuntimeError("injected failure after the hold")

    monkeypatch.setattr(server.counter.points, "audit", broken_audit)
    failed = await client.post(
        f"/v1/guests/{guest.id}/redemptions",
        json={"points": 40, "location_id": str(demo.locations["station"])},
        headers={"Authorization": f"Bearer {demo.staff['barista']}", "Idempotency-Key": "redeem-1"},
    )
    assert failed.status_code == 500
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)


async def _script_calls(services: Any) -> int:
    stats = await services.gate.client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


async def test_a_checkout_makes_at_most_two_redis_calls(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    body = await order_body(client, demo, 20)
    # Earlier tests restarted this Redis; the app reloads its scripts when it notices.
    await services.loyalty.preload_scripts()
    await services.loyalty.hot.forget({guest.id})  # a cold wallet: the most calls
    before = await _script_calls(services)
    assert (await place(client, guest, body)).status_code == 201
    assert await _script_calls(services) - before <= 2
    before = await _script_calls(services)
    assert (await place(client, guest, body)).status_code == 201  # warm: the reserve only
    assert await _script_calls(services) - before == 1
    assert await redis_state(services, guest.id) == (WELCOME - 40, 40)


async def test_a_spend_redis_could_not_admit_drops_the_wallet_once_postgres_decided(
    client: Client, guest: GuestHandle, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis fails this one call (a read timeout under overload) while it is otherwise up:
    PostgreSQL places the order alone, and the wallet Redis still holds, which lacks that
    hold, is dropped instead of staying wrong until some later outage."""
    from server.infra.redis import RedisUnavailable

    await services.loyalty.reload(guest.id)
    assert await redis_state(services, guest.id) == (WELCOME, 0)

    async def timed_out(*_: Any, **__: Any) -> Any:
        raise RedisUnavailable("Timeout reading from redis")

    monkeypatch.setattr(services.loyalty.hot, "reserve", timed_out)
    placed = await place(client, guest, await order_body(client, demo, 70))
    monkeypatch.undo()
    assert placed.status_code == 201, placed.text
    assert await ledger_state(services, guest.id) == (WELCOME - 70, 70)
    assert await redis_state(services, guest.id) is None
    again = await place(client, guest, await order_body(client, demo, 30))
    assert again.status_code == 201, again.text
    assert await redis_state(services, guest.id) == await ledger_state(services, guest.id)

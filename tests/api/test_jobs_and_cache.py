"""Worker jobs (payment window, lot expiry), the negative-balance rule, the menu and locations
caches."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.app import create_app
from server.auth.notifier import RecordingNotifier
from server.infra.identity import Principal
from server.lifespan import lifespan
from server.loyalty.jobs import expire_lots, recount_tier_points
from server.seed.demo import PROGRAM
from tests.api.helpers import (
    advance,
    assert_books_balance,
    ledger_state,
    menu_items,
    order_body,
    pay,
    place,
    redis_state,
    spendable,
)
from tests.api.staff_support import other_brand
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in

WELCOME = PROGRAM.welcome_bonus_points


async def test_unpaid_orders_expire_and_release_their_points(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("AVO", 1), points=80)
    order = (await place(client, guest, body)).json()
    assert await ledger_state(services, guest.id) == (WELCOME - 80, 80)
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE orders SET payment_expires_at = now() - interval '1 second' WHERE id = $1",
            uuid.UUID(order["id"]),
        )
    assert await services.orders.expire_unpaid(100) >= 1
    shown = (await client.get(f"/v1/orders/{order['id']}", headers=guest.headers)).json()
    assert shown["status"] == "cancelled"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    late = await pay(client, guest, order["id"])
    assert late.status_code == 409 and late.json()["type"].endswith("/order-not-payable")
    await assert_books_balance(services, demo.brand_id)


async def test_a_paced_pass_expires_the_whole_backlog_in_chunks(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """The worker drains what is due in chunks (here of 2), each a call of the real job with
    a rest between, until a chunk comes back short."""
    from server.worker import Pacer, run_once

    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("AVO", 1), points=10)
    orders = [(await place(client, guest, body)).json()["id"] for _ in range(5)]
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE orders SET payment_expires_at = now() - interval '1 second'"
            " WHERE id = ANY($1::uuid[])",
            [uuid.UUID(order_id) for order_id in orders],
        )
    rests: list[float] = []

    async def rest(seconds: float) -> bool:
        rests.append(seconds)
        return True

    done = await run_once(services, slow=False, pacer=Pacer(0.5, 2, rest), relay=False)
    assert done["expired_orders"] >= 5 and len(rests) >= 2
    for order_id in orders:
        shown = (await client.get(f"/v1/orders/{order_id}", headers=guest.headers)).json()
        assert shown["status"] == "cancelled"
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)


async def test_the_live_queues_are_relayed_while_a_long_pass_runs(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass draining a backlog at its share of the time lasts seconds; the relay of the
    live queues ran only between passes and waited for it."""
    import server.worker

    busy, release = asyncio.Event(), asyncio.Event()

    async def long_backlog(_: int) -> int:
        busy.set()
        await release.wait()
        return 0

    relays = 0
    relay = server.worker.relay_outbox

    async def counted(relaying: Any, batch_size: int) -> int:
        nonlocal relays
        relays += relaying is services  # not the live server's worker, if one runs
        return await relay(relaying, batch_size)

    monkeypatch.setattr(services.orders, "expire_unpaid", long_backlog)
    monkeypatch.setattr(server.worker, "relay_outbox", counted)
    stop = asyncio.Event()
    running = asyncio.create_task(server.worker.run_forever(services, stop, relay_interval_s=0.01))
    try:
        await asyncio.wait_for(busy.wait(), 10)
        during = relays
        for _ in range(1_000):
            if relays >= during + 3:
                break
            await asyncio.sleep(0.01)
        assert relays >= during + 3, "the relay waited for the pass"
    finally:
        stop.set()
        release.set()
        await asyncio.wait_for(running, 10)


async def _expired_lot(
    services: Any,
    demo: Demo,
    guest_id: uuid.UUID,
    points: int,
    days_ago: int = 400,
    *,
    expires_at: datetime | None = None,
    rewind: bool = True,
) -> None:
    """A lot of ``points`` the guest earned, which expired ``days_ago`` days ago (or expires
    at ``expires_at``). Lots are never made already expired outside tests, so lot expiry's
    watermark (migration 0009) may be past this one: ``rewind`` puts it back before the lot,
    as if the job had not run since."""
    loyalty = services.loyalty
    expires_at = expires_at or datetime.now(UTC) - timedelta(days=days_ago)
    async with services.db.transaction() as conn:
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE guest_id = $1", guest_id)
        transfer_id = uuid.uuid4()
        state = await loyalty.ledger.credit(
            conn,
            transfer_id=transfer_id,
            brand_id=demo.brand_id,
            account_id=account_id,
            points=points,
            code="earn",
            source="issued",
            expires_at=expires_at,
        )
        if rewind:
            await conn.execute(
                "UPDATE lot_expiry_watermarks SET expires_at = $2, account_id = $3"
                " WHERE brand_id = $1 AND expires_at >= $2",
                demo.brand_id,
                expires_at - timedelta(microseconds=1),
                uuid.UUID(int=0),
            )
    await loyalty.mirror(guest_id, "credit", transfer_id, state, points)


async def _watermark(services: Any, demo: Demo) -> datetime:
    async with services.db.connection() as conn:
        mark: datetime = await conn.fetchval(
            "SELECT expires_at FROM lot_expiry_watermarks WHERE brand_id = $1", demo.brand_id
        )
    return mark


async def _expiries(services: Any, guest_id: uuid.UUID) -> list[int]:
    async with services.db.connection() as conn:
        rows = await conn.fetch(
            "SELECT t.amount FROM transfers t JOIN accounts a ON a.id = t.debit_account_id"
            " WHERE a.guest_id = $1 AND t.code = 'expiry' ORDER BY t.created_at",
            guest_id,
        )
    return [r["amount"] for r in rows]


async def test_lot_expiry_reads_only_what_expired_since_its_watermark(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    loyalty = services.loyalty
    now = datetime.now(UTC)
    lapsed, behind, later = [await sign_in(client, notifier) for _ in range(3)]
    await _expired_lot(services, demo, lapsed.id, 300, days_ago=1)
    await expire_lots(loyalty, 10_000, now)
    assert await _expiries(services, lapsed.id) == [300]
    mark = await _watermark(services, demo)
    assert now - timedelta(days=1) <= mark <= now

    # A second pass expires nothing more, and reads nothing behind the watermark: a lot
    # planted there (never the case outside tests) is not seen.
    await _expired_lot(
        services, demo, behind.id, 200, expires_at=mark - timedelta(seconds=1), rewind=False
    )
    assert await expire_lots(loyalty, 10_000, now) == 0
    assert await _expiries(services, lapsed.id) == [300]
    assert await _expiries(services, behind.id) == []
    assert await _watermark(services, demo) == mark

    # A lot that expires after the watermark is caught by the pass after it expires, once.
    soon = now + timedelta(minutes=30)
    await _expired_lot(services, demo, later.id, 100, expires_at=soon, rewind=False)
    assert await expire_lots(loyalty, 10_000, now) == 0  # not yet expired
    assert await _expiries(services, later.id) == []
    assert await expire_lots(loyalty, 10_000, now + timedelta(hours=1)) == 1
    assert await _watermark(services, demo) == soon
    assert await expire_lots(loyalty, 10_000, now + timedelta(hours=1)) == 0
    assert await _expiries(services, later.id) == [100]
    assert await ledger_state(services, later.id) == (WELCOME, 0)
    assert await _expiries(services, lapsed.id) == [300]
    await assert_books_balance(services, demo.brand_id)


async def test_expired_points_held_when_their_lot_passed_expire_once_the_hold_is_voided(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """Points on hold are consumed as long as the hold lasts; a voided hold gives them back to
    the oldest lot. The watermark passes that lot while they are held: the guest is looked at
    again on the next pass."""
    await _expired_lot(services, demo, guest.id, 300, days_ago=1)
    items = await menu_items(client, demo.locations["station"])
    order = (
        await place(client, guest, order_body(demo, items, ("GC50", 1), points=WELCOME + 300))
    ).json()
    assert order["points_spent"] == WELCOME + 300
    await expire_lots(services.loyalty, 10_000)
    assert await _expiries(services, guest.id) == []  # all of it is held
    cancelled = await client.post(f"/v1/orders/{order['id']}/cancel", headers=guest.headers)
    assert cancelled.status_code == 200, cancelled.text
    await expire_lots(services.loyalty, 10_000)  # the watermark is past the lot by now
    assert await _expiries(services, guest.id) == [300]
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    await expire_lots(services.loyalty, 10_000)
    assert await _expiries(services, guest.id) == [300]
    await assert_books_balance(services, demo.brand_id)


async def test_expired_lots_are_taken_oldest_first(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    loyalty = services.loyalty
    await _expired_lot(services, demo, guest.id, 300, days_ago=1)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("GC50", 1), points=120)
    order = (await place(client, guest, body)).json()
    assert (await pay(client, guest, order["id"])).status_code == 200
    assert await spendable(client, guest) == WELCOME + 300 - 120
    # The 120 spent came out of the oldest lot (the expired one): 180 of it is left to expire.
    assert await expire_lots(loyalty, 10_000) >= 1
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await redis_state(services, guest.id) == (WELCOME, 0)
    await expire_lots(loyalty, 10_000)  # running again takes nothing more
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    ledger = (await client.get("/v1/me/ledger", headers=guest.headers)).json()["entries"]
    assert ledger[0]["code"] == "expiry" and ledger[0]["points"] == -180
    await assert_books_balance(services, demo.brand_id)


async def test_regulars_with_nothing_due_do_not_starve_the_expiry_job(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    """Regulars whose expired lots were all spent, and who have earned since, have an expired
    lot and spendable points, yet nothing due. They used to fill each pass's batch, every
    pass touched nobody, and the points really due never expired. Passes until one touches
    nobody must leave nobody with points due."""
    batch = 3
    regulars = [await sign_in(client, notifier) for _ in range(batch + 1)]
    for regular in regulars:
        await _expired_lot(services, demo, regular.id, 300)
        await give_points(client, demo, regular, -(WELCOME + 300))  # spent it all
        await give_points(client, demo, regular, 50)  # and earned since
    lapsed = await sign_in(client, notifier)
    await _expired_lot(services, demo, lapsed.id, 300)
    for _ in range(1_000):
        if await expire_lots(services.loyalty, batch) == 0:
            break
    assert await ledger_state(services, lapsed.id) == (WELCOME, 0)  # the 300 expired
    for regular in regulars:
        assert await ledger_state(services, regular.id) == (50, 0)  # nothing of theirs
    await assert_books_balance(services, demo.brand_id)


async def test_a_clawback_can_go_negative_and_then_refuses_spending(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("SAL", 10))
    order = (await place(client, guest, body)).json()
    await pay(client, guest, order["id"])
    done = (
        await advance(client, demo, order["id"], "accepted", "preparing", "ready", "completed")
    ).json()
    earned = done["points_earned"]
    assert earned > 0
    # Spend everything, including what that order earned, on another order.
    total = WELCOME + earned
    big = {
        "location_id": str(demo.locations["station"]),
        "lines": [{"item_id": items["GC50"]["id"], "quantity": 1}],
        "points_to_spend": total,
    }
    spent = (await place(client, guest, big)).json()
    await pay(client, guest, spent["id"])
    assert await spendable(client, guest) == 0
    refund = await client.post(
        f"/v1/orders/{order['id']}/refunds",
        json={"line_ids": [done["lines"][0]["id"]]},
        headers={
            "Authorization": f"Bearer {demo.staff['shift_lead']}",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert refund.status_code == 200 and refund.json()["status"] == "refunded"
    assert await ledger_state(services, guest.id) == (-earned, 0)
    assert await redis_state(services, guest.id) == (-earned, 0)
    small = {
        "location_id": str(demo.locations["station"]),
        "lines": [{"item_id": items["CRO"]["id"], "quantity": 1}],
        "points_to_spend": 1,
    }
    refused = await place(client, guest, small)
    assert refused.status_code == 422 and refused.json()["type"].endswith("/insufficient-points")
    # New points repay the debt first.
    await give_points(client, demo, guest, earned + 5)
    assert await spendable(client, guest) == 5
    await assert_books_balance(services, demo.brand_id)


async def test_selling_out_an_item_reaches_every_process(
    client: Client, demo: Demo, settings: Any, guest: GuestHandle, services: Any
) -> None:
    station = demo.locations["station"]
    other = create_app(settings)
    async with lifespan(other):
        other_catalog = other.state.services.catalog
        assert (await other_catalog.menu(station)).items  # cached in the other process now
        cookie = (await menu_items(client, station))["COO"]
        lead = {"Authorization": f"Bearer {demo.staff['shift_lead']}"}
        path = f"/v1/locations/{station}/items/{cookie['id']}/availability"
        try:
            assert (
                await client.post(path, json={"available": False}, headers=lead)
            ).status_code == 204
            for _ in range(40):
                if not (await other_catalog.menu(station)).items[uuid.UUID(cookie["id"])].available:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the other process kept serving its stale menu")
            assert (await menu_items(client, station))["COO"]["available"] is False
            body = {
                "location_id": str(station),
                "lines": [{"item_id": cookie["id"], "quantity": 1}],
            }
            refused = await place(client, guest, body)
            assert refused.status_code == 422 and refused.json()["type"].endswith(
                "/item-unavailable"
            )
        finally:
            assert (
                await client.post(path, json={"available": True}, headers=lead)
            ).status_code == 204
    barista = {"Authorization": f"Bearer {demo.staff['barista']}"}
    assert (await client.post(path, json={"available": False}, headers=barista)).status_code == 403
    # Another brand's admin covers every location of their own brand, not this one.
    brand = await other_brand(services)
    stranger = str(
        services.tokens.issue(
            Principal(kind="staff", subject_id=uuid.uuid4(), brand_id=brand.brand_id, role="admin")
        )
    )
    refused = await client.post(
        path, json={"available": False}, headers={"Authorization": f"Bearer {stranger}"}
    )
    assert refused.status_code == 404 and refused.json()["type"].endswith("/location-not-found")
    assert (await menu_items(client, station))["COO"]["available"] is True
    audited = await services.db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'item.availability' AND detail->>'item_id' = $1",
        cookie["id"],
    )
    assert audited >= 2  # sold out and brought back, by the shift lead


async def test_tier_points_are_recounted_from_the_ledger(
    client: Client, demo: Demo, services: Any
) -> None:
    async with services.db.transaction() as conn:
        guest_id = await conn.fetchval(
            "SELECT guest_id FROM guest_profiles WHERE points_earned_12m > 0 ORDER BY guest_id LIMIT 1"
        )
        await conn.execute(
            "UPDATE guest_profiles SET points_earned_12m = 999999, refreshed_at = now() - interval '2 days'"
            " WHERE guest_id = $1",
            guest_id,
        )
    assert await recount_tier_points(services.loyalty, 100_000) >= 1
    async with services.db.connection() as conn:
        account_id = await conn.fetchval("SELECT id FROM accounts WHERE guest_id = $1", guest_id)
        program = await services.loyalty.programs.get(demo.brand_id, conn)
        _, _, expected = await services.loyalty.tier(conn, program, account_id)
        stored = await conn.fetchval(
            "SELECT points_earned_12m FROM guest_profiles WHERE guest_id = $1", guest_id
        )
    assert stored == expected < 999999


async def test_a_location_created_after_the_cache_filled_is_found_once_the_miss_window_passed(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    locations = services.locations
    assert await locations.get(uuid.uuid4()) is None  # fills the cache; an unknown id is None
    # Within the miss window a miss does not reload: lookups of unknown ids stay cheap.
    monkeypatch.setattr(locations, "MISS_REFRESH_S", 3600.0)
    early = await other_brand(services)
    assert await locations.get(early.location_id) is None
    # Past it, the first miss reloads the map and finds the new location.
    monkeypatch.setattr(locations, "MISS_REFRESH_S", 0.0)
    found = await locations.get(early.location_id)
    assert found is not None and found.name == "Other Main"


async def test_idempotent_answers_are_forgotten_after_their_retention(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    from server.worker import forget_idempotency_keys

    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("AVO", 1))
    old_key, recent_key = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await place(client, guest, body, key=old_key)).status_code == 201
    recent = await place(client, guest, body, key=recent_key)
    assert recent.status_code == 201
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = now() - make_interval(days => $2 + 1)"
            " WHERE key = $1",
            old_key,
            services.settings.idempotency_retention_days,
        )
    assert await forget_idempotency_keys(services, 1000) == 1
    kept = await services.db.fetch(
        "SELECT key FROM idempotency_keys WHERE key = ANY($1::text[])", [old_key, recent_key]
    )
    assert [row["key"] for row in kept] == [recent_key]
    # Within the retention a retry still answers the first answer.
    replay = await place(client, guest, body, key=recent_key)
    assert replay.json()["id"] == recent.json()["id"]
    assert await forget_idempotency_keys(services, 1000) == 0

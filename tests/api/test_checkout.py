"""Checkout end to end over the real app, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.loyalty.model import earn_points
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
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in


async def test_full_journey(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    welcome = PROGRAM.welcome_bonus_points
    assert await spendable(client, guest) == welcome
    await give_points(client, demo, guest, 400)
    station = demo.locations["station"]
    items = await menu_items(client, station)
    latte = items["LAT"]
    oat = next(m for m in latte["modifiers"] if m["name"] == "Oat milk")
    body = {
        "location_id": str(station),
        "lines": [
            {"item_id": latte["id"], "quantity": 2, "modifier_ids": [oat["id"]]},
            {"item_id": items["CRO"]["id"], "quantity": 1},
            {"item_id": items["GC25"]["id"], "quantity": 1},
        ],
        "points_to_spend": 150,
    }
    response = await place(client, guest, body)
    assert response.status_code == 201, response.text
    order = response.json()
    subtotal = (
        2 * (latte["price_minor"] + oat["price_delta_minor"]) + items["CRO"]["price_minor"] + 2500
    )
    assert order["subtotal_minor"] == subtotal
    assert order["status"] == "awaiting_payment"
    assert order["points_spent"] == 150
    assert order["amount_due_minor"] == subtotal - 150
    assert sum(line["points_spent"] for line in order["lines"]) == 150
    # Points held, not spent yet.
    assert await ledger_state(services, guest.id) == (welcome + 400 - 150, 150)
    assert await redis_state(services, guest.id) == (welcome + 400 - 150, 150)

    paid = await pay(client, guest, order["id"])
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "placed"
    assert await ledger_state(services, guest.id) == (welcome + 400 - 150, 0)

    completed = (
        await advance(client, demo, order["id"], "accepted", "preparing", "ready", "completed")
    ).json()
    # Earned on money really paid for earning lines: not the points part, not the gift card.
    net_earning = sum(line["paid_minor"] for line in order["lines"] if line["sku"] != "GC25")
    expected = earn_points(PROGRAM, net_earning, PROGRAM.tiers[0])
    assert completed["status"] == "completed"
    assert completed["points_earned"] == expected > 0
    balance = welcome + 400 - 150 + expected
    assert await spendable(client, guest) == balance
    assert await ledger_state(services, guest.id) == (balance, 0)
    assert await redis_state(services, guest.id) == (balance, 0)
    ledger = (await client.get("/v1/me/ledger", headers=guest.headers)).json()["entries"]
    assert [e["code"] for e in ledger][:2] == ["earn", "spend"]
    assert sum(e["points"] for e in ledger if e["state"] == "posted") == balance
    await assert_books_balance(services, demo.brand_id)


async def test_replayed_checkout_returns_the_same_order(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CRO", 1), points=50)
    key = str(uuid.uuid4())
    first = await place(client, guest, body, key)
    again = await place(client, guest, body, key)
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id) == 1
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points - 50, 50)

    other = await place(client, guest, {**body, "points_to_spend": 0}, key)
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency-conflict")


async def test_concurrent_duplicates_have_one_effect(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("ESP", 1), points=40)
    key = str(uuid.uuid4())
    responses = await asyncio.gather(*(place(client, guest, body, key) for _ in range(8)))
    assert {r.status_code for r in responses} <= {201, 409}
    ok = [r for r in responses if r.status_code == 201]
    assert ok and all(r.content == ok[0].content for r in ok)
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id) == 1
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points - 40, 40)
    assert await redis_state(services, guest.id) == (PROGRAM.welcome_bonus_points - 40, 40)


async def test_fifty_concurrent_spends_from_one_wallet(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    # 1,000 points exactly: take the welcome bonus back off first.
    await give_points(client, demo, guest, 1000 - PROGRAM.welcome_bonus_points)
    items = await menu_items(client, demo.locations["station"])
    # 100 points must stay within the 30% cap: four cinnamon buns (13.60) allow 408 points.
    body = order_body(demo, items, ("CIN", 4), points=100)
    responses = await asyncio.gather(*(place(client, guest, body) for _ in range(50)))
    codes = [r.status_code for r in responses]
    assert codes.count(201) == 10, codes
    refused = [r.json()["type"] for r in responses if r.status_code != 201]
    assert len(refused) == 40 and all(t.endswith("/insufficient-points") for t in refused)
    assert await ledger_state(services, guest.id) == (0, 1000)
    assert await redis_state(services, guest.id) == (0, 1000)
    await assert_books_balance(services, demo.brand_id)


async def test_cancel_before_acceptance_returns_the_points(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("AVO", 1), points=90)
    awaiting = (await place(client, guest, body)).json()
    cancelled = await client.post(f"/v1/orders/{awaiting['id']}/cancel", headers=guest.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)

    placed = (await place(client, guest, body)).json()
    assert (await pay(client, guest, placed["id"])).status_code == 200
    assert await spendable(client, guest) == PROGRAM.welcome_bonus_points - 90
    assert (
        await client.post(f"/v1/orders/{placed['id']}/cancel", headers=guest.headers)
    ).status_code == 200
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    assert await redis_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    again = await client.post(f"/v1/orders/{placed['id']}/cancel", headers=guest.headers)
    assert again.status_code == 409 and again.json()["type"].endswith("/not-cancellable")
    await assert_books_balance(services, demo.brand_id)


async def test_cancelling_a_paid_order_refunds_the_money_and_the_promo_use(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    """The points came back on cancel, but the money stayed with the café and the promo code
    stayed used (a helper found WELCOME10 answering promo-exhausted after the cancel)."""
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("SAL", 1), ("LAT", 2), points=50, promo_code="WELCOME10")
    placed = await place(client, guest, body)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert (await pay(client, guest, order["id"])).status_code == 200
    cancelled = await client.post(f"/v1/orders/{order['id']}/cancel", headers=guest.headers)
    assert cancelled.status_code == 200, cancelled.text
    async with services.db.connection() as conn:
        paid = await conn.fetchval(
            "SELECT sum(amount_minor) FROM payments WHERE order_id = $1 AND status = 'succeeded'",
            uuid.UUID(order["id"]),
        )
        refunded = await conn.fetchrow(
            "SELECT sum(r.amount_minor) AS money, sum(r.points_restored) AS points"
            " FROM refunds r JOIN order_lines l ON l.id = r.order_line_id WHERE l.order_id = $1",
            uuid.UUID(order["id"]),
        )
    assert paid == order["amount_due_minor"] > 0
    assert refunded["money"] == paid and refunded["points"] == 50
    assert await ledger_state(services, guest.id) == (PROGRAM.welcome_bonus_points, 0)
    again = await place(client, guest, body)  # WELCOME10 is once per guest: usable again
    assert again.status_code == 201, again.text
    assert again.json()["discount_minor"] == order["discount_minor"] > 0
    await assert_books_balance(services, demo.brand_id)


async def test_declined_payment_leaves_the_order_payable(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("MUF", 1))
    order = (await place(client, guest, body)).json()
    declined = await pay(client, guest, order["id"], token="declined")
    assert declined.status_code == 402
    assert declined.json()["type"].endswith("/payment-declined")
    # Like every other problem, it names the request it answers.
    assert declined.json()["instance"] == f"/v1/orders/{order['id']}/payments"
    shown = await client.get(f"/v1/orders/{order['id']}", headers=guest.headers)
    assert shown.json()["status"] == "awaiting_payment"
    assert (await pay(client, guest, order["id"])).json()["status"] == "placed"


async def test_refund_of_one_line_moves_points_back_once(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    await give_points(client, demo, guest, 500)
    items = await menu_items(client, demo.locations["station"])
    body = {
        "location_id": str(demo.locations["station"]),
        "lines": [
            {"item_id": items["SAL"]["id"], "quantity": 2},
            {"item_id": items["FLW"]["id"], "quantity": 1},
        ],
        "points_to_spend": 300,
    }
    order = (await place(client, guest, body)).json()
    await pay(client, guest, order["id"])
    completed = (
        await advance(client, demo, order["id"], "accepted", "preparing", "ready", "completed")
    ).json()
    before = await spendable(client, guest)
    salad = next(line for line in completed["lines"] if line["sku"] == "SAL")
    assert salad["points_spent"] > 0 and salad["points_earned"] > 0
    lead = {"Authorization": f"Bearer {demo.staff['shift_lead']}"}

    async def refund(key: str) -> Any:
        return await client.post(
            f"/v1/orders/{order['id']}/refunds",
            json={"line_ids": [salad["id"]]},
            headers={**lead, "Idempotency-Key": key},
        )

    first = await refund("refund-1")
    assert first.status_code == 200, first.text
    expected = before + salad["points_spent"] - salad["points_earned"]
    assert await spendable(client, guest) == expected
    # The same call again, with the same key and with a new one: no second effect.
    assert (await refund("refund-1")).content == first.content
    assert (await refund("refund-2")).status_code == 200
    assert await spendable(client, guest) == expected
    assert await ledger_state(services, guest.id) == (expected, 0)
    assert await redis_state(services, guest.id) == (expected, 0)
    refunded_line = next(line for line in first.json()["lines"] if line["id"] == salad["id"])
    assert refunded_line["refunded"] is True
    assert first.json()["status"] == "completed"
    await assert_books_balance(services, demo.brand_id)


async def test_another_guests_order_is_not_found(
    client: Client, notifier: RecordingNotifier, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("COO", 1))
    order = (await place(client, guest, body)).json()
    stranger = await sign_in(client, notifier)
    for response in (
        await client.get(f"/v1/orders/{order['id']}", headers=stranger.headers),
        await pay(client, stranger, order["id"]),
        await client.post(f"/v1/orders/{order['id']}/cancel", headers=stranger.headers),
    ):
        assert response.status_code == 404
        assert response.json()["type"].endswith("/order-not-found")


async def test_points_to_earn_uses_the_guests_tier(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    async with services.db.connection() as conn:
        phone = await conn.fetchval(
            "SELECT g.phone_e164 FROM guests g JOIN guest_profiles p ON p.guest_id = g.id"
            " WHERE p.points_earned_12m >= $1 ORDER BY g.phone_e164 LIMIT 1",
            PROGRAM.tiers[-1].min_points,
        )
    regular = await sign_in(client, notifier, phone)
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("SAL", 3))
    placed = await place(client, regular, body, key="tier-order")
    order = placed.json()
    assert order["points_to_earn"] == earn_points(
        PROGRAM, 3 * items["SAL"]["price_minor"], PROGRAM.tiers[-1]
    )
    # The database stored the same figure, and a retry replays the top tier's response.
    stored = await client.get(f"/v1/orders/{order['id']}", headers=regular.headers)
    assert stored.json()["points_to_earn"] == order["points_to_earn"]
    again = await place(client, regular, body, key="tier-order")
    assert again.status_code == 201 and again.content == placed.content


async def test_an_order_with_nothing_to_pay_skips_payment(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CRO", 1), promo_code="FIVEOFF")
    order = (await place(client, guest, body)).json()
    assert order["amount_due_minor"] == 0 and order["status"] == "placed"
    assert order["points_to_earn"] == 0  # a discount is not money paid
    again = await pay(client, guest, order["id"])
    assert again.status_code == 409 and again.json()["type"].endswith("/order-not-payable")


async def test_payment_replay_and_status_rules(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("TEA", 1))
    order = (await place(client, guest, body)).json()
    headers = {**guest.headers, "Idempotency-Key": str(uuid.uuid4())}
    payment = {"provider": "test", "token": "ok"}
    first = await client.post(f"/v1/orders/{order['id']}/payments", json=payment, headers=headers)
    replay = await client.post(f"/v1/orders/{order['id']}/payments", json=payment, headers=headers)
    assert first.status_code == replay.status_code == 200 and first.content == replay.content
    lead = {"Authorization": f"Bearer {demo.staff['shift_lead']}"}
    skip = await client.post(
        f"/v1/orders/{order['id']}/status", json={"status": "ready"}, headers=lead
    )
    assert skip.status_code == 409 and skip.json()["type"].endswith("/invalid-transition")
    await advance(client, demo, order["id"], "accepted")
    late_cancel = await client.post(f"/v1/orders/{order['id']}/cancel", headers=guest.headers)
    assert late_cancel.status_code == 409
    by_lead = await client.post(f"/v1/orders/{order['id']}/cancel", headers=lead)
    assert by_lead.status_code == 200 and by_lead.json()["status"] == "cancelled"


async def test_a_promo_with_a_total_limit_runs_out(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    async with services.db.transaction() as conn:
        code = f"LIMIT{uuid.uuid4().hex[:6].upper()}"
        await conn.execute(
            "INSERT INTO promo_codes (brand_id, code, kind, value, valid_from, valid_until, per_guest_limit, total_limit)"
            " VALUES ($1, $2, 'fixed', 50, now() - interval '1 day', now() + interval '1 day', 1, 2)",
            demo.brand_id,
            code,
        )
    services.orders.checkout._promos.forget()  # promo definitions are cached per process; this one is new
    items = await menu_items(client, demo.locations["station"])
    body = order_body(demo, items, ("CRO", 1), promo_code=code)
    guests = [await sign_in(client, notifier) for _ in range(4)]
    responses = await asyncio.gather(*(place(client, g, body) for g in guests))
    assert sorted(r.status_code for r in responses) == [201, 201, 422, 422]
    assert all(
        r.json()["type"].endswith("/promo-exhausted") for r in responses if r.status_code == 422
    )

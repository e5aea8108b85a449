"""A batch's guests taken together (issue 23): a chunk's guest receipts are resolved, earned
and folded into profiles set-based, and that must come to exactly what taking the same
receipts one at a time in file order comes to: points per receipt (a guest's tier counts what
their earlier receipts of the chunk earned), ledger rows, balances, the Redis mirror and the
guest profile."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import msgspec

from server.auth.notifier import RecordingNotifier
from server.pos.integrations import IntegrationIn
from server.settings import Settings
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import SignedTill, new_till, points_of_receipts, receipt_body
from tests.api.test_pos_batch import send
from tests.conftest import Client, Demo, GuestHandle, app_client, sign_in

# The demo program: 5 points per 1.00 at Bronze; Silver (x1.25) from 500 points in the window.
BEANS = {"name": "Beans 1kg", "unit_price_minor": 4000}  # 200 points at Bronze, 250 at Silver
CUP = {"name": "Filter coffee", "unit_price_minor": 300}  # 15 at Bronze
CAPPUCCINO = {"sku": "CAP", "name": "Cappuccino", "unit_price_minor": 380}  # on the menu
WELCOME = 100  # the demo's welcome bonus


def receipts_of(till: SignedTill, a: GuestHandle, b: GuestHandle) -> list[dict[str, Any]]:
    """Guest a crosses into Silver within the chunk; b buys twice; anonymous sales between."""
    by_a, by_b = {"phone": a.phone}, {"phone": b.phone}
    return [
        receipt_body(till, BEANS, guest=by_a),
        receipt_body(till, CUP),
        receipt_body(till, BEANS, guest=by_a),
        receipt_body(till, CUP, guest=by_b),
        receipt_body(till, BEANS, BEANS, guest=by_a),  # 400 at Bronze: 800 in the window
        receipt_body(till, CUP, guest={"phone": "not a phone"}),
        receipt_body(till, BEANS, CAPPUCCINO, guest=by_a),  # 273 at Silver (x1.25 on 43.80)
        receipt_body(till, CUP, CUP, guest=by_b),
    ]


async def points_earned(services: Any, till: SignedTill, ids: list[str]) -> list[int]:
    rows = await services.db.fetch(
        "SELECT r.external_id, r.points_earned FROM receipts r"
        " WHERE r.integration_id = $1 AND r.external_id = ANY($2::text[])",
        uuid.UUID(till.integration_id),
        ids,
    )
    by_id = {row["external_id"]: row["points_earned"] for row in rows}
    return [by_id[i] for i in ids]


async def wallet(services: Any, guest: GuestHandle) -> tuple[tuple[int, int, int], Any]:
    """(posted, pending, version) in PostgreSQL, and what Redis mirrors."""
    row = await services.db.fetchrow(
        "SELECT credits_posted - debits_posted AS posted, debits_pending AS pending, version"
        " FROM accounts WHERE guest_id = $1",
        guest.id,
    )
    assert row is not None
    hot = await services.loyalty.hot.read(guest.id)
    return (row["posted"], row["pending"], row["version"]), hot[0] if hot else None


async def profile(services: Any, guest: GuestHandle) -> tuple[int, int, int]:
    row = await services.db.fetchrow(
        "SELECT visits_total, spend_total_minor, points_earned_12m FROM guest_profiles"
        " WHERE guest_id = $1",
        guest.id,
    )
    assert row is not None
    return row["visits_total"], row["spend_total_minor"], row["points_earned_12m"]


async def top_items(services: Any, guest: GuestHandle) -> dict[str, int]:
    """The guest's top items by name, with their counts."""
    items = await services.db.fetchval(
        "SELECT top_items FROM guest_profiles WHERE guest_id = $1", guest.id
    )
    return {entry["name"]: entry["count"] for entry in items}


async def whole_profile(services: Any, guest: GuestHandle) -> dict[str, Any]:
    """The profile but its refresh time and exact visit times (the two tills' receipts were
    made a moment apart)."""
    row = await services.db.fetchrow("SELECT * FROM guest_profiles WHERE guest_id = $1", guest.id)
    assert row is not None
    folded = {k: v for k, v in dict(row).items() if k not in ("guest_id", "refreshed_at")}
    folded["last_visit_at"] = folded["last_visit_at"] is not None
    folded["recent_visits"] = len(folded["recent_visits"])
    return folded


async def test_a_chunk_earns_exactly_what_one_receipt_after_another_earns(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    batch_till, alone_till = await new_till(client, demo), await new_till(client, demo)
    a, b = await sign_in(client, notifier), await sign_in(client, notifier)
    ref_a, ref_b = await sign_in(client, notifier), await sign_in(client, notifier)
    for guest in (a, b, ref_a, ref_b):
        await services.loyalty.reload(guest.id)  # credits are mirrored onto a loaded wallet

    batched = receipts_of(batch_till, a, b)
    raw = b"\n".join(json.dumps(body).encode() for body in batched) + b"\n"
    results = (await send(batch_till, raw)).json()
    assert [r["status"] for r in results] == ["created"] * len(batched)

    alone = receipts_of(alone_till, ref_a, ref_b)
    for body in alone:
        response = await alone_till.receipt(body)
        assert response.status_code == 201, response.text

    got = await points_earned(services, batch_till, [r["external_id"] for r in batched])
    expected = await points_earned(services, alone_till, [r["external_id"] for r in alone])
    assert got == expected == [200, 0, 200, 15, 400, 0, 273, 30]
    assert await points_of_receipts(services, a.id) == 1073
    assert await points_of_receipts(services, b.id) == 45
    for guest, ref in ((a, ref_a), (b, ref_b)):
        (pg, hot), (ref_pg, _) = await wallet(services, guest), await wallet(services, ref)
        assert pg == ref_pg  # balance and version: one credit after another
        assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
        assert await profile(services, guest) == await profile(services, ref)
    assert await profile(services, a) == (4, 20_380, 1073)
    folded = await whole_profile(services, a)
    assert folded == await whole_profile(services, ref_a)
    assert [item["count"] for item in folded["top_items"]] == [1]
    transfers = await services.db.fetch(
        "SELECT t.amount, t.reason, t.location_id FROM transfers t"
        " JOIN accounts a ON a.id = t.credit_account_id"
        " WHERE a.guest_id = $1 AND t.code = 'earn' ORDER BY t.amount, t.reason",
        a.id,
    )
    assert sorted(t["amount"] for t in transfers) == [200, 200, 273, 400]
    assert {t["reason"] for t in transfers} == {
        f"receipt {body['external_id']}"
        for body in batched
        if body.get("guest") == {"phone": a.phone}
    }
    assert {t["location_id"] for t in transfers} == {batch_till.location_id}
    await assert_books_balance(services, demo.brand_id)


async def test_a_receipt_taken_alone_during_a_batch_of_the_same_guest_loses_nothing(
    settings: Settings, demo: Demo
) -> None:
    # Chunks of 10, so the batch's transactions and the receipts sent alone interleave.
    small = msgspec.structs.replace(settings, pos_batch_chunk_lines=10)
    notifier = RecordingNotifier()
    async with app_client(small, notifier) as client:
        services = client.app.state.services
        created = await services.pos_integrations.create(
            IntegrationIn(location_id=demo.locations["station"])
        )
        till = SignedTill(
            client, str(created.integration_id), created.key_id, created.secret,
            demo.locations["station"],
        )  # fmt: skip
        realtime = await new_till(client, demo)
        a, b = await sign_in(client, notifier), await sign_in(client, notifier)
        await services.loyalty.reload(a.id)
        batched = [
            receipt_body(till, CUP, guest={"phone": (a if n % 3 else b).phone}) for n in range(60)
        ]
        raw = b"\n".join(json.dumps(body).encode() for body in batched) + b"\n"

        async def alone() -> list[int]:
            statuses = []
            for _ in range(8):
                response = await realtime.receipt(
                    receipt_body(realtime, CUP, guest={"phone": a.phone})
                )
                statuses.append(response.status_code)
                await asyncio.sleep(0)
            return statuses

        answer, statuses = await asyncio.gather(send(till, raw), alone())
        assert answer.status_code == 200, answer.text
        assert [r["status"] for r in answer.json()] == ["created"] * 60
        assert statuses == [201] * 8
        earned = await points_of_receipts(services, a.id)
        stored = await services.db.fetchval(
            "SELECT sum(points_earned) FROM receipts WHERE guest_id = $1", a.id
        )
        assert earned == stored and earned >= 15 * 48  # Silver from 500 points on
        pg, hot = await wallet(services, a)
        assert pg[0] == WELCOME + earned  # no credit lost or counted twice
        assert hot is not None and (hot.posted, hot.pending) == pg[:2]
        assert (await profile(services, a))[:2] == (48, 300 * 48)
        await assert_books_balance(services, demo.brand_id)


async def test_a_chunk_the_database_refuses_is_taken_one_receipt_at_a_time_points_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    # A price PostgreSQL cannot store makes the set-based part roll back (its earnings with
    # it); the receipts are then taken one at a time: the guest earns once, Redis agrees.
    till = await new_till(client, demo)
    a = await sign_in(client, notifier)
    await services.loyalty.reload(a.id)
    too_dear = receipt_body(till, {"name": "Gold bar", "unit_price_minor": 2**63})
    bodies = [receipt_body(till, BEANS, guest={"phone": a.phone}), too_dear]
    raw = b"\n".join(json.dumps(body).encode() for body in bodies) + b"\n"
    results = (await send(till, raw)).json()
    assert [r["status"] for r in results] == ["created", "refused"]
    assert await points_of_receipts(services, a.id) == 200
    pg, hot = await wallet(services, a)
    assert pg[0] == WELCOME + 200
    assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
    assert await profile(services, a) == (1, 4000, 200)

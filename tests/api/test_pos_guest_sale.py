"""A sale naming a guest by card or phone in two statements (issue 23; server/pos/guest_sale.py)
must come to exactly what the receipt's transaction comes to (``pos_guest_sale_fast`` off):
points (a tier crossed included), ledger rows, balances, the Redis wallet, the guest's profile,
the receipt and its answer; and concurrent receipts of one guest lose nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from server.auth.notifier import RecordingNotifier
from server.lifespan import fold_receipt_profile
from server.pos.receipts import ReceiptVisit, Taken
from server.settings import Settings
from shared import qr
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import (
    SignedTill,
    new_till,
    points_of_receipts,
    receipt_body,
    slug,
)
from tests.api.test_pos_batch import send
from tests.api.test_pos_batch_guests import (
    BEANS,
    CAPPUCCINO,
    CUP,
    WELCOME,
    points_earned,
    profile,
    top_items,
    wallet,
)
from tests.conftest import Client, Demo, GuestHandle, app_client, sign_in


@pytest.fixture
async def slow(settings: Settings, notifier: RecordingNotifier) -> AsyncIterator[Client]:
    """The same app with the two-statement guest sale off: the receipt's transaction."""
    off = msgspec.structs.replace(settings, pos_guest_sale_fast=False)
    async with app_client(off, notifier) as test_client:
        yield test_client


class Counted:
    """The intake's guest sale hook, counting the sales it took (not left to take_on)."""

    def __init__(self, services: Any) -> None:
        self.inner = services.intake.guest_sale
        assert self.inner is not None
        self.taken = 0
        services.intake.guest_sale = self

    async def __call__(self, *args: Any) -> Taken | None:
        taken = await self.inner(*args)
        self.taken += taken is not None and taken.status == "created"
        return taken


async def card_of(services: Any, guest: GuestHandle) -> str:
    number = await services.db.fetchval("SELECT card_number FROM guests WHERE id = $1", guest.id)
    return f"{number[:4]} {number[4:8]}-{number[8:]}"  # as a till may type it


async def qr_of(services: Any, guest: GuestHandle, *, forged: bool = False) -> str:
    row = await services.db.fetchrow(
        "SELECT public_id, qr_secret FROM guests WHERE id = $1", guest.id
    )
    secret = b"not the guest's secret" if forged else bytes(row["qr_secret"])
    return qr.generate(row["public_id"], secret, now_s=time.time())


async def receipts_of(services: Any, till: SignedTill, guest: GuestHandle) -> list[dict[str, Any]]:
    """The first visit, then the tier crossed (Silver from 500) by phone and by card; a QR,
    and a forged QR beside the phone (the transactional way: the phone names the guest)."""
    by_phone, by_card = {"phone": guest.phone}, {"card_number": await card_of(services, guest)}
    scanned = {"qr_code": await qr_of(services, guest), "phone": "+4915100000000"}
    forged = {"qr_code": await qr_of(services, guest, forged=True), **by_phone}
    return [
        receipt_body(till, CUP, guest=by_phone),  # first visit: the transactional way
        receipt_body(till, BEANS, guest=by_phone),
        receipt_body(till, BEANS, CAPPUCCINO, guest=by_card),
        receipt_body(till, BEANS, guest=by_phone),  # 634 in the window after it: Silver
        receipt_body(till, CUP, CAPPUCCINO, guest={**by_card, "phone": "+4915100000000"}),
        receipt_body(till, {"name": "Staff water", "unit_price_minor": 0}, guest=by_phone),
        receipt_body(till, CUP, guest=scanned),
        receipt_body(till, CAPPUCCINO, guest=forged),
    ]


async def rows(services: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await services.db.fetch(sql, *args)]


async def ledger_of(services: Any, guest: GuestHandle) -> list[dict[str, Any]]:
    """The guest's earn transfers, as comparable across two guests and tills."""
    found = await rows(
        services,
        "SELECT t.amount, t.code, t.phase, t.location_id, t.order_id, t.timeout_at,"
        " t.pending_id, d.kind AS source, t.expires_at::date AS expires_on,"
        " split_part(t.reason, ' ', 1) AS reason"
        " FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
        " JOIN accounts d ON d.id = t.debit_account_id"
        " WHERE a.guest_id = $1 AND t.code = 'earn' ORDER BY t.created_at",
        guest.id,
    )
    return found


async def receipts_stored(services: Any, till: SignedTill) -> list[dict[str, Any]]:
    """The till's receipts, lines and stored answers, ids left out."""
    receipts = await rows(
        services,
        "SELECT r.kind, r.location_id, r.pos_customer_id, r.currency, r.gross_minor,"
        " r.discount_minor, r.earning_paid_minor, r.points_tender, r.points_earned,"
        " r.points_reversed, r.points_restored, r.guest_id IS NOT NULL AS named,"
        " k.response, k.receipt_id = r.id AS keyed,"
        " (SELECT json_agg(json_build_object('line_no', l.line_no, 'sku', l.sku, 'name', l.name,"
        "  'quantity', l.quantity, 'paid', l.paid_minor, 'points', l.points_earned,"
        "  'earns', l.earns) ORDER BY l.line_no) FROM receipt_lines l"
        "  WHERE l.receipt_id = r.id)::text AS lines"
        " FROM receipts r JOIN receipt_keys k"
        " ON k.integration_id = r.integration_id AND k.external_id = r.external_id"
        " WHERE r.integration_id = $1 ORDER BY r.created_at",
        uuid.UUID(till.integration_id),
    )
    for r in receipts:
        answer = json.loads(r.pop("response"))
        r["answer"] = {k: v for k, v in answer.items() if k not in ("receipt_id", "guest_id")}
    return receipts


async def whole_profile(services: Any, guest: GuestHandle) -> dict[str, Any]:
    row = await services.db.fetchrow("SELECT * FROM guest_profiles WHERE guest_id = $1", guest.id)
    assert row is not None
    folded = {k: v for k, v in dict(row).items() if k not in ("guest_id", "refreshed_at")}
    folded["recent_visits"] = len(folded["recent_visits"])
    folded["last_visit_at"] = folded["last_visit_at"] is not None
    return folded


async def test_two_statements_come_to_what_the_transaction_comes_to(
    client: Client, slow: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    counted = Counted(services)
    fast_till, slow_till = await new_till(client, demo), await new_till(slow, demo)
    guest, twin = await sign_in(client, notifier), await sign_in(client, notifier)
    for g in (guest, twin):
        await services.loyalty.reload(g.id)  # credits are mirrored onto a loaded wallet
    fast, ref = (
        await receipts_of(services, fast_till, guest),
        await receipts_of(services, slow_till, twin),
    )
    for till, bodies in ((fast_till, fast), (slow_till, ref)):
        for body in bodies:
            response = await till.receipt(body)
            assert response.status_code == 201, response.text
    assert counted.taken == 6  # all but the first visit and the forged QR: two statements

    got = await points_earned(services, fast_till, [b["external_id"] for b in fast])
    expected = await points_earned(services, slow_till, [b["external_id"] for b in ref])
    assert got == expected == [15, 200, 219, 200, 42, 0, 18, 23]
    assert await points_of_receipts(services, guest.id) == sum(got)
    (pg, hot), (ref_pg, ref_hot) = await wallet(services, guest), await wallet(services, twin)
    assert pg == ref_pg and pg[0] == WELCOME + sum(got)
    assert hot is not None and ref_hot is not None
    assert (hot.posted, hot.pending, hot.version) == pg
    assert await ledger_of(services, guest) == await ledger_of(services, twin)
    assert await whole_profile(services, guest) == await whole_profile(services, twin)
    assert await receipts_stored(services, fast_till) == await receipts_stored(services, slow_till)
    await assert_books_balance(services, demo.brand_id)


async def test_a_replay_answers_the_first_answer_and_another_body_is_409(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    guest = await sign_in(client, notifier)
    await till.receipt(receipt_body(till, CUP, guest={"phone": guest.phone}))  # first visit
    body = receipt_body(till, BEANS, guest={"phone": guest.phone})
    first = await till.receipt(body)
    again = await till.receipt(body)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await till.receipt({**body, "lines": [CUP]})
    assert other.status_code == 409 and slug(other) == "receipt-conflict"
    assert await points_of_receipts(services, guest.id) == 15 + 200


async def first_visit(till: SignedTill, guest: GuestHandle) -> None:
    response = await till.receipt(receipt_body(till, CUP, guest={"phone": guest.phone}))
    assert response.status_code == 201, response.text


async def test_eight_receipts_of_one_guest_at_once_all_earn(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    counted = Counted(services)
    tills = [await new_till(client, demo) for _ in range(8)]
    guest = await sign_in(client, notifier)
    await services.loyalty.reload(guest.id)
    await first_visit(tills[0], guest)
    bodies = [receipt_body(t, CUP, guest={"phone": guest.phone}) for t in tills]
    answers = await asyncio.gather(*(t.receipt(b) for t, b in zip(tills, bodies, strict=True)))
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert [a.json()["points_earned"] for a in answers] == [15] * 8
    assert counted.taken >= 1
    earned = await points_of_receipts(services, guest.id)
    assert earned == 15 * 9
    pg, hot = await wallet(services, guest)
    assert pg[0] == WELCOME + earned
    assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
    assert await profile(services, guest) == (9, 300 * 9, 15 * 9)
    await assert_books_balance(services, demo.brand_id)


async def test_one_receipt_eight_times_at_once_earns_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    guest = await sign_in(client, notifier)
    await services.loyalty.reload(guest.id)
    await first_visit(till, guest)
    body = receipt_body(till, BEANS, guest={"phone": guest.phone})
    answers = await asyncio.gather(*(till.receipt(body) for _ in range(8)))
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1
    conflicting = {**body, "lines": [CUP]}
    others = await asyncio.gather(*(till.receipt(conflicting) for _ in range(3)))
    assert [slug(a) for a in others] == ["receipt-conflict"] * 3
    assert await points_of_receipts(services, guest.id) == 15 + 200
    pg, hot = await wallet(services, guest)
    assert hot is not None and (hot.posted, hot.pending, hot.version) == pg
    assert await profile(services, guest) == (2, 4300, 215)


async def test_a_batch_of_the_same_guest_meanwhile_loses_nothing(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    counted = Counted(services)
    batch_till, realtime = await new_till(client, demo), await new_till(client, demo)
    guest = await sign_in(client, notifier)
    await services.loyalty.reload(guest.id)
    await first_visit(realtime, guest)
    batched = [receipt_body(batch_till, CUP, guest={"phone": guest.phone}) for _ in range(40)]
    raw = b"\n".join(json.dumps(body).encode() for body in batched) + b"\n"

    async def alone() -> list[int]:
        statuses = []
        for _ in range(8):
            body = receipt_body(realtime, CUP, guest={"phone": guest.phone})
            statuses.append((await realtime.receipt(body)).status_code)
            await asyncio.sleep(0)
        return statuses

    answer, statuses = await asyncio.gather(send(batch_till, raw), alone())
    assert [r["status"] for r in answer.json()] == ["created"] * 40
    assert statuses == [201] * 8
    assert counted.taken >= 1
    earned = await points_of_receipts(services, guest.id)
    stored = await services.db.fetchval(
        "SELECT sum(points_earned) FROM receipts WHERE guest_id = $1", guest.id
    )
    assert earned == stored and earned >= 15 * 49
    pg, hot = await wallet(services, guest)
    assert pg[0] == WELCOME + earned
    assert hot is not None and (hot.posted, hot.pending) == pg[:2]
    assert (await profile(services, guest))[:2] == (49, 300 * 49)
    await assert_books_balance(services, demo.brand_id)


SHOP_BEANS = {"name": "Beans", "category": "shop", "unit_price_minor": 1290}  # earns nothing


async def test_a_refund_lowers_the_profile_and_a_guest_sale_after_it_counts_on(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    counted = Counted(services)
    till = await new_till(client, demo)
    guest = await sign_in(client, notifier)
    by_phone = {"phone": guest.phone}
    await first_visit(till, guest)
    three_caps = {**CAPPUCCINO, "quantity": "3"}
    sale = receipt_body(till, three_caps, SHOP_BEANS, guest=by_phone)
    sold = await till.receipt(sale)
    assert sold.status_code == 201, sold.text
    points = sold.json()["points_earned"]
    assert counted.taken == 1
    assert await profile(services, guest) == (2, 300 + 3 * 380 + 1290, 15 + points)
    assert (await top_items(services, guest))["Cappuccino"] == 3

    async def refund(*lines: dict[str, Any]) -> int:
        answer = await till.receipt(receipt_body(till, *lines, refund_of=sale["external_id"]))
        assert answer.status_code == 201, answer.text
        return int(answer.json()["points_reversed"])

    one = await refund(CAPPUCCINO)
    assert one > 0
    assert await profile(services, guest) == (2, 300 + 2 * 380 + 1290, 15 + points - one)
    assert (await top_items(services, guest))["Cappuccino"] == 2
    # A line that earned nothing: the spend goes down, the points earned stay.
    assert await refund(SHOP_BEANS) == 0
    assert await profile(services, guest) == (2, 300 + 2 * 380, 15 + points - one)
    rest = await refund({**CAPPUCCINO, "quantity": "2"})
    assert one + rest == points
    assert await profile(services, guest) == (2, 300, 15)
    assert "Cappuccino" not in await top_items(services, guest)
    avg = await services.db.fetchval(
        "SELECT avg_ticket_minor FROM guest_profiles WHERE guest_id = $1", guest.id
    )
    assert avg == 300 // 2

    # The two-statement sale still takes the next one, counting on from the lowered profile.
    again = await till.receipt(receipt_body(till, CUP, guest=by_phone))
    assert again.status_code == 201, again.text
    assert counted.taken == 2
    assert await profile(services, guest) == (3, 600, 30)
    await assert_books_balance(services, demo.brand_id)


async def test_a_profile_lowered_by_a_refund_is_not_replaced_by_a_fold_read_before_it(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    """Migration 0029: a refund of a line that earned nothing changes neither visits nor
    points earned; the spend a two-statement sale's fold read is what tells it apart."""
    till = await new_till(client, demo)
    guest = await sign_in(client, notifier)
    await first_visit(till, guest)
    sale = receipt_body(till, SHOP_BEANS, guest={"phone": guest.phone})
    assert (await till.receipt(sale)).status_code == 201
    # What a guest sale's read saw, and its fold of one more cup.
    read = await services.db.fetchrow("SELECT * FROM guest_profiles WHERE guest_id = $1", guest.id)
    now = datetime.now(UTC)
    cup = ReceiptVisit(guest.id, uuid.UUID(str(till.location_id)), now, 300, 15)
    folded = fold_receipt_profile(read, cup, "UTC", now)
    assert folded["spend_read"] == 300 + 1290

    refunded = await till.receipt(receipt_body(till, SHOP_BEANS, refund_of=sale["external_id"]))
    assert refunded.status_code == 201, refunded.text
    assert await profile(services, guest) == (2, 300, 15)

    async def replace(profile_json: dict[str, object]) -> bool:
        return bool(
            await services.db.fetchval(
                "SELECT guest_profile_replace($1, $2, $3, $4)",
                guest.id,
                read["visits_total"],
                read["points_earned_12m"],
                profile_json,
            )
        )

    assert not await replace(folded)  # read before the refund: refused
    assert await profile(services, guest) == (2, 300, 15)
    assert await replace({**folded, "spend_read": 300})  # as read after it
    # The code before 0029 sends no spend_read; while it still serves (a rolling deploy), its
    # fold is checked on visits and points earned as before.
    legacy = {k: v for k, v in folded.items() if k != "spend_read"}
    assert await services.db.fetchval(
        "SELECT guest_profile_replace($1, $2, $3, $4)",
        guest.id, read["visits_total"] + 1, read["points_earned_12m"] + 15, legacy,
    )  # fmt: skip


async def test_refunds_and_sales_of_one_guest_at_once_leave_the_profile_exact(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    """Four refunds (lines that earned nothing among them) and four two-statement sales of
    one guest, all at once from four tills: every one lands in the profile once."""
    tills = [await new_till(client, demo) for _ in range(4)]
    guest = await sign_in(client, notifier)
    by_phone = {"phone": guest.phone}
    await services.loyalty.reload(guest.id)
    await first_visit(tills[0], guest)
    sales = [receipt_body(t, CAPPUCCINO, SHOP_BEANS, guest=by_phone) for t in tills]
    for till, body in zip(tills, sales, strict=True):
        assert (await till.receipt(body)).status_code == 201
    before = await profile(services, guest)
    assert before[:2] == (5, 300 + 4 * (380 + 1290))

    refunds = [
        receipt_body(t, SHOP_BEANS, refund_of=sale["external_id"])
        for t, sale in zip(tills, sales, strict=True)
    ]
    more = [receipt_body(t, CUP, guest=by_phone) for t in tills]
    answers = await asyncio.gather(
        *(t.receipt(b) for t, b in zip(tills * 2, refunds + more, strict=True))
    )
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert [a.json()["points_reversed"] for a in answers[:4]] == [0] * 4
    visits, spend, points = await profile(services, guest)
    assert (visits, spend) == (9, 300 + 4 * 380 + 4 * 300)
    assert points == before[2] + 4 * 15 == await points_of_receipts(services, guest.id)
    await assert_books_balance(services, demo.brand_id)

"""Receipts from tills: earning on net paid money, idempotency (also under 8 concurrent sends),
late offline receipts with a QR judged by its scan time, claim codes, line-level refunds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.auth.notifier import RecordingNotifier
from server.loyalty.model import allocate, earn_points
from server.pos import receipts
from server.seed.demo import PROGRAM
from shared import qr
from tests.api.helpers import assert_books_balance, ledger_state
from tests.api.pos_support import (
    SignedTill,
    new_till,
    points_of_receipts,
    receipt_body,
    slug,
)
from tests.api.test_pos_batch_guests import profile, top_items
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in

BRONZE = PROGRAM.tiers[0]
WELCOME = PROGRAM.welcome_bonus_points


def earned(paid_minor: int) -> int:
    return earn_points(PROGRAM, paid_minor, BRONZE)


async def qr_of(services: Any, guest: GuestHandle, at: datetime) -> str:
    row = await services.db.fetchrow(
        "SELECT public_id, qr_secret FROM guests WHERE id = $1", guest.id
    )
    return qr.generate(row["public_id"], bytes(row["qr_secret"]), now_s=at.timestamp())


async def test_points_are_earned_on_net_paid_money_only(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    lines = [
        {"sku": "CAP", "name": "Cappuccino", "quantity": "2", "unit_price_minor": 380,
         "discount_minor": 60},
        # Not on the menu: kept by name, earns like any other line.
        {"sku": "XMAS-MUG", "name": "Christmas mug", "category": "Merch",
         "unit_price_minor": 1000},
        {"sku": "ESP", "name": "Espresso", "unit_price_minor": 240, "voided": True},
        {"name": "Gift card", "unit_price_minor": 2500, "gift_card": True},
        # The demo's "Shop" category earns nothing, by category name or by SKU.
        {"name": "Beans", "category": "shop", "unit_price_minor": 1290},
        {"sku": "BNS", "name": "House Blend Beans 250 g", "unit_price_minor": 1290},
        # Sold by weight: 0.25 kg at 40.00 a kg.
        {"name": "Loose beans", "category": "Coffee", "quantity": "0.25",
         "unit_price_minor": 4000},
    ]  # fmt: skip
    body = receipt_body(
        till,
        *lines,
        payments=[
            {"tender": "card", "amount_minor": 7180},
            {"tender": "points", "amount_minor": 300},
        ],
        guest={"phone": guest.phone},
    )
    response = await till.receipt(body)
    assert response.status_code == 201, response.text
    answer = response.json()
    weights = [700, 1000, 0, 0, 1290, 1290, 1000]
    shares = allocate(300, weights)
    paid = [w - s for w, s in zip(weights, shares, strict=True)]
    expected = earned(paid[0] + paid[1] + paid[6])
    assert answer["guest_id"] == str(guest.id) and answer["points_earned"] == expected
    assert answer.get("claim_code") is None
    assert await points_of_receipts(services, guest.id) == expected
    assert (await ledger_state(services, guest.id))[0] == WELCOME + expected

    rows = await services.db.fetch(
        "SELECT line_no, earns, points_earned, points_paid, paid_minor FROM receipt_lines"
        " WHERE receipt_id = $1 ORDER BY line_no",
        uuid.UUID(answer["receipt_id"]),
    )
    assert [r["earns"] for r in rows] == [True, True, False, False, False, False, True]
    assert sum(r["points_earned"] for r in rows) == expected
    assert [r["points_paid"] for r in rows] == shares
    assert (await profile(services, guest))[:2] == (1, sum(paid) + 2500)
    await assert_books_balance(services, demo.brand_id)


async def test_a_receipt_without_prices_is_kept_and_earns_nothing(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    body = receipt_body(till, {"name": "Staff coffee"}, guest={"phone": guest.phone})
    response = await till.receipt(body)
    assert response.status_code == 201, response.text
    assert response.json()["points_earned"] == 0
    stored = await services.db.fetchval(
        "SELECT count(*) FROM receipt_lines WHERE receipt_id = $1",
        uuid.UUID(response.json()["receipt_id"]),
    )
    assert stored == 1


async def test_a_replay_answers_as_the_first_time_and_a_changed_body_conflicts(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    body = receipt_body(till, guest={"card_number": await card_of(services, guest)})
    first = await till.receipt(body)
    assert first.status_code == 201, first.text
    replay = await till.receipt(body)
    assert replay.status_code == 201 and replay.content == first.content
    changed = await till.receipt({**body, "lines": [{"name": "Tea", "unit_price_minor": 300}]})
    assert changed.status_code == 409 and slug(changed) == "receipt-conflict"
    assert await points_of_receipts(services, guest.id) == earned(380)


async def card_of(services: Any, guest: GuestHandle) -> str:
    return str(await services.db.fetchval("SELECT card_number FROM guests WHERE id = $1", guest.id))


async def test_the_same_receipt_sent_8_times_at_once_earns_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    body = receipt_body(
        till,
        {"sku": "LAT", "name": "Latte", "quantity": "3", "unit_price_minor": 410},
        guest={"phone": guest.phone},
    )
    answers = await asyncio.gather(*(till.receipt(body) for _ in range(8)))
    assert [a.status_code for a in answers] == [201] * 8, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert await points_of_receipts(services, guest.id) == earned(1230)
    assert (
        await services.db.fetchval(
            "SELECT count(*) FROM receipts WHERE external_id = $1", body["external_id"]
        )
        == 1
    )
    await assert_books_balance(services, demo.brand_id)


async def test_a_late_offline_receipt_is_judged_by_when_the_qr_was_scanned(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    scanned = datetime.now(UTC) - timedelta(hours=3)
    code = await qr_of(services, guest, scanned)
    body = receipt_body(
        till,
        occurred_at=scanned + timedelta(seconds=40),
        guest={"qr_code": code, "scanned_at": scanned.isoformat()},
    )
    response = await till.receipt(body)
    assert response.status_code == 201, response.text
    assert response.json()["guest_id"] == str(guest.id)
    assert response.json()["points_earned"] == earned(380)
    # The till resends it (it never saw our answer): the first answer, no second earning.
    resent = await till.receipt(body)
    assert resent.status_code == 201 and resent.content == response.content
    assert await points_of_receipts(services, guest.id) == earned(380)

    # The same three-hour-old code claimed as scanned now is expired: kept anonymous.
    stale = receipt_body(till, guest={"qr_code": code, "scanned_at": datetime.now(UTC).isoformat()})
    refused = await till.receipt(stale)
    assert refused.status_code == 201, refused.text
    assert refused.json()["guest_id"] is None
    assert refused.json()["guest_unresolved"] == "expired"
    assert refused.json()["claim_code"]


async def test_a_pos_customer_id_links_to_the_guest_it_came_with(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    customer = f"CUST-{uuid.uuid4().hex[:8]}"
    first = await till.receipt(
        receipt_body(till, guest={"phone": guest.phone, "pos_customer_id": customer})
    )
    assert first.json()["guest_id"] == str(guest.id)
    later = await till.receipt(receipt_body(till, guest={"pos_customer_id": customer}))
    assert later.json()["guest_id"] == str(guest.id)
    other_till = await new_till(client, demo)
    elsewhere = await other_till.receipt(
        receipt_body(other_till, guest={"pos_customer_id": customer})
    )
    assert elsewhere.json()["guest_id"] is None  # a customer id is only unique per integration


async def test_a_claim_code_is_claimed_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    body = receipt_body(
        till, {"sku": "FLW", "name": "Flat White", "quantity": "2", "unit_price_minor": 400}
    )
    response = await till.receipt(body)
    assert response.status_code == 201, response.text
    code = response.json()["claim_code"]
    assert code and response.json()["guest_id"] is None

    first, second = await sign_in(client, notifier), await sign_in(client, notifier)
    claims = await asyncio.gather(
        client.post("/v1/me/claims", json={"code": code.lower()}, headers=first.headers),
        client.post("/v1/me/claims", json={"code": code}, headers=first.headers),
        client.post("/v1/me/claims", json={"code": code}, headers=second.headers),
    )
    statuses = sorted(c.status_code for c in claims)
    assert statuses == [201, 409, 409], [c.text for c in claims]
    won = next(c for c in claims if c.status_code == 201)
    assert won.json()["points_earned"] == earned(800)
    assert {slug(c) for c in claims if c.status_code == 409} == {"claim-already-used"}
    total = await points_of_receipts(services, first.id) + await points_of_receipts(
        services, second.id
    )
    assert total == earned(800)
    unknown = await client.post("/v1/me/claims", json={"code": "ZZZZZZZZZZ"}, headers=first.headers)
    assert unknown.status_code == 404
    await assert_books_balance(services, demo.brand_id)


async def test_a_claim_code_expires(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    response = await till.receipt(receipt_body(till))
    code = response.json()["claim_code"]
    await services.db.fetchval(
        "UPDATE receipt_claims SET expires_at = now() - interval '1 second' WHERE code = $1", code
    )
    guest = await sign_in(client, notifier)
    late = await client.post("/v1/me/claims", json={"code": code}, headers=guest.headers)
    assert late.status_code == 422 and slug(late) == "claim-expired"


async def spend_at_till(till: SignedTill, guest: GuestHandle, points: int) -> None:
    held = await till.post(
        "/v1/pos/redemptions",
        {"guest_id": str(guest.id), "points": points},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert held.status_code == 201, held.text
    posted = await till.post(f"/v1/pos/redemptions/{held.json()['id']}/post", {})
    assert posted.status_code == 200, posted.text


async def test_a_refund_reverses_and_restores_line_by_line_exactly_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    await give_points(client, demo, guest, 400)
    till = await new_till(client, demo)
    await spend_at_till(till, guest, 250)
    sale = receipt_body(
        till,
        {"sku": "CAP", "name": "Cappuccino", "quantity": "3", "unit_price_minor": 380},
        {"name": "Carrot cake", "unit_price_minor": 450},
        payments=[
            {"tender": "card", "amount_minor": 1340},
            {"tender": "points", "amount_minor": 250},
        ],
        guest={"phone": guest.phone},
    )
    sold = await till.receipt(sale)
    assert sold.status_code == 201, sold.text
    points = sold.json()["points_earned"]
    lines = await services.db.fetch(
        "SELECT points_earned, points_paid FROM receipt_lines WHERE receipt_id = $1 ORDER BY line_no",
        uuid.UUID(sold.json()["receipt_id"]),
    )
    (cap_earned, cap_paid), (cake_earned, cake_paid) = [tuple(r) for r in lines]
    assert cap_earned + cake_earned == points and cap_paid + cake_paid == 250
    before = (await ledger_state(services, guest.id))[0]

    one_cap = receipt_body(
        till,
        {"sku": "CAP", "name": "Cappuccino", "unit_price_minor": 380},
        refund_of=sale["external_id"],
    )
    first = await till.receipt(one_cap)
    assert first.status_code == 201, first.text
    assert first.json()["points_reversed"] == cap_earned // 3
    assert first.json()["points_restored"] == cap_paid // 3
    replay = await till.receipt(one_cap)
    assert replay.content == first.content

    rest = receipt_body(
        till,
        {"sku": "CAP", "name": "Cappuccino", "quantity": "2", "unit_price_minor": 380},
        {"name": "carrot cake", "unit_price_minor": 450},
        refund_of=sale["external_id"],
    )
    second = await till.receipt(rest)
    assert second.status_code == 201, second.text
    assert first.json()["points_reversed"] + second.json()["points_reversed"] == points
    assert first.json()["points_restored"] + second.json()["points_restored"] == 250

    too_much = receipt_body(
        till, {"name": "Carrot cake", "unit_price_minor": 450}, refund_of=sale["external_id"]
    )
    refused = await till.receipt(too_much)
    assert refused.status_code == 422 and slug(refused) == "refund-exceeds-sale"
    unknown = await till.receipt(receipt_body(till, refund_of="NO-SUCH-SALE"))
    assert unknown.status_code == 422 and slug(unknown) == "unknown-sale"

    # Everything returned: what the sale earned is gone, the points that paid are back.
    assert (await ledger_state(services, guest.id))[0] == before - points + 250
    assert await points_of_receipts(services, guest.id) == 0
    await assert_books_balance(services, demo.brand_id)


async def test_bad_receipts_are_refused_with_a_problem(client: Client, demo: Demo) -> None:
    till = await new_till(client, demo)
    zero = await till.receipt(
        receipt_body(till, {"name": "X", "quantity": "0", "unit_price_minor": 1})
    )
    assert zero.status_code == 422 and slug(zero) == "invalid-line"
    discount = await till.receipt(
        receipt_body(till, {"name": "X", "unit_price_minor": 100, "discount_minor": 101})
    )
    assert discount.status_code == 422 and slug(discount) == "invalid-line"
    currency = await till.receipt(receipt_body(till, currency="USD"))
    assert currency.status_code == 422 and slug(currency) == "currency-mismatch"
    naive = await till.receipt({**receipt_body(till), "occurred_at": "2026-01-01T10:00:00"})
    assert naive.status_code == 422
    missing = await till.receipt({"external_id": "x"})
    assert missing.status_code == 422 and slug(missing) == "validation-error"


async def test_lines_returned_before_a_claim_earn_nothing(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    till = await new_till(client, demo)
    sale = receipt_body(
        till, {"sku": "FLW", "name": "Flat White", "quantity": "2", "unit_price_minor": 400}
    )
    code = (await till.receipt(sale)).json()["claim_code"]
    returned = await till.receipt(
        receipt_body(
            till,
            {"sku": "FLW", "name": "Flat White", "unit_price_minor": 400},
            refund_of=sale["external_id"],
        )
    )
    assert returned.status_code == 201, returned.text
    assert returned.json()["points_reversed"] == 0 and returned.json()["guest_id"] is None
    guest = await sign_in(client, notifier)
    claimed = await client.post("/v1/me/claims", json={"code": code}, headers=guest.headers)
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["points_earned"] == earned(800) - earned(800) // 2
    assert await points_of_receipts(services, guest.id) == earned(800) - earned(800) // 2
    kept = earned(800) - earned(800) // 2
    assert await profile(services, guest) == (1, 400, kept)  # the cup kept
    assert await top_items(services, guest) == {"Flat White": 1}
    # Returning the other cup now takes back exactly what is left.
    rest = await till.receipt(
        receipt_body(
            till,
            {"sku": "FLW", "name": "Flat White", "unit_price_minor": 400},
            refund_of=sale["external_id"],
        )
    )
    assert rest.json()["guest_id"] == str(guest.id)
    assert await points_of_receipts(services, guest.id) == 0
    assert await profile(services, guest) == (1, 0, 0)
    assert await top_items(services, guest) == {}
    await assert_books_balance(services, demo.brand_id)


async def test_a_claim_code_taken_already_writes_nothing_and_another_is_tried(
    client: Client, demo: Demo, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anonymous sale is one statement (claim, code, receipt, lines): a code that is taken
    aborts all of it, and the sale is written once, with the next code."""
    till = await new_till(client, demo)
    first = await till.receipt(receipt_body(till))
    assert first.status_code == 201, first.text
    taken = first.json()["claim_code"]
    codes = iter([taken, "FRESHCODE2"])
    monkeypatch.setattr(receipts, "new_claim_code", lambda: next(codes))
    body = receipt_body(till)
    second = await till.receipt(body)
    assert second.status_code == 201, second.text
    assert second.json()["claim_code"] == "FRESHCODE2"
    async with services.db.connection() as conn:
        rows = await conn.fetchval(
            "SELECT (SELECT count(*) FROM receipt_keys WHERE external_id = $1)"
            " + (SELECT count(*) FROM receipts WHERE external_id = $1)"
            " + (SELECT count(*) FROM receipt_claims WHERE receipt_id = $2::uuid)",
            body["external_id"],
            second.json()["receipt_id"],
        )
        owner = await conn.fetchval("SELECT receipt_id FROM receipt_claims WHERE code = $1", taken)
    assert rows == 3
    assert str(owner) == first.json()["receipt_id"]

"""The vendor routes and the order feed behind the real signature guard and intake: a
Loyverse sale with a customer earns for the guest that customer id was linked to, its refund
reverses the returned line, a replay answers the same; unsigned is refused.

Payloads: tests/data/vendors/loyverse/ (where they come from: tests/unit/test_pos_vendors.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.loyalty.model import allocate, earn_points
from server.seed.demo import PROGRAM
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import new_till, points_of_receipts, receipt_body, slug
from tests.conftest import Client, Demo, sign_in

DATA = Path(__file__).resolve().parent.parent / "data" / "vendors"
CUSTOMER = "0b7c6a1e-3f2d-4c55-9d1e-6a2f8e4b7c90"  # customer_id of both Loyverse receipts
LOYVERSE = "/v1/pos/vendors/loyverse/receipts"


async def test_a_loyverse_sale_and_refund_move_the_linked_guests_points(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    till = await new_till(client, demo)
    linked = await till.receipt(
        receipt_body(
            till, {"name": "Water"}, guest={"phone": guest.phone, "pos_customer_id": CUSTOMER}
        )
    )
    assert linked.json()["guest_id"] == str(guest.id)

    sale = (DATA / "loyverse" / "sale_discounts_taxes_customer.json").read_bytes()
    sold = await till.post(LOYVERSE, raw=sale)
    assert sold.status_code == 201, sold.text
    # Net paid per line: 2 x 5.00 - 1.00, 3.20 - 0.77, 0.25 kg x 24.00 - 0.60 (none excluded).
    paid = [900, 243, 540]
    points = earn_points(PROGRAM, sum(paid), PROGRAM.tiers[0])
    assert sold.json()["guest_id"] == str(guest.id) and sold.json()["points_earned"] == points
    again = await till.post(LOYVERSE, raw=sale)
    assert again.status_code == 201 and again.content == sold.content

    refund = (DATA / "loyverse" / "refund.json").read_bytes()
    returned = await till.post(LOYVERSE, raw=refund)
    assert returned.status_code == 201, returned.text
    croissant = allocate(points, paid)[1]
    assert returned.json()["points_reversed"] == croissant
    assert await points_of_receipts(services, guest.id) == points - croissant
    await assert_books_balance(services, demo.brand_id)


async def test_vendor_routes_and_the_feed_are_signed(client: Client, demo: Demo) -> None:
    till = await new_till(client, demo)
    sale = (DATA / "loyverse" / "sale_discounts_taxes_customer.json").read_bytes()
    as_json = {"Content-Type": "application/json"}
    unsigned = await client.post(LOYVERSE, content=sale, headers=as_json)
    assert unsigned.status_code == 401 and slug(unsigned) == "signature-required"
    assert (await client.get("/v1/pos/orders")).status_code == 401
    headers = till.signed_headers(b"")
    feed = await client.get("/v1/pos/orders", headers=headers)
    assert feed.status_code == 200, feed.text
    assert isinstance(feed.json()["events"], list) and feed.json()["cursor"]

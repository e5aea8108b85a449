"""The vendor routes and the order feed behind the real signature guard and intake: a
Loyverse sale with a customer earns for the guest that customer id was linked to, its refund
reverses the returned line, a replay answers the same; unsigned is refused.

Payloads: tests/data/vendors/loyverse/ (where they come from: tests/unit/test_pos_vendors.py).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.loyalty.model import allocate, earn_points
from server.seed.demo import PROGRAM
from tests.api.helpers import assert_books_balance
from tests.api.pos_support import (
    SignedTill,
    admin,
    new_till,
    points_of_receipts,
    receipt_body,
    slug,
)
from tests.conftest import Client, Demo, sign_in

DATA = Path(__file__).resolve().parent.parent / "data" / "vendors"
CUSTOMER = "0b7c6a1e-3f2d-4c55-9d1e-6a2f8e4b7c90"  # customer_id of both Loyverse receipts
LOYVERSE = "/v1/pos/vendors/loyverse/receipts"
SQUARE = "/v1/pos/vendors/square/receipts"


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


async def vendor_till(client: Client, demo: Demo, vendor_store_id: str) -> SignedTill:
    """A till whose integration stands for one store of its vendor account."""
    response = await client.post(
        "/v1/pos/integrations",
        json={"location_id": str(demo.locations["station"]), "vendor_store_id": vendor_store_id},
        headers=admin(demo),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["vendor_store_id"] == vendor_store_id
    return SignedTill(
        client, body["integration_id"], body["key_id"], body["secret"], demo.locations["station"]
    )


async def receipts_of(services: Any, till: SignedTill) -> int:
    return int(
        await services.db.fetchval(
            "SELECT count(*) FROM receipts WHERE integration_id = $1",
            uuid.UUID(till.integration_id),
        )
    )


async def test_a_payload_from_another_store_of_the_vendor_account_is_refused(
    client: Client, demo: Demo, services: Any
) -> None:
    """Square's ``location_id`` and Loyverse's ``store_id`` against the store the admin named:
    one integration's key must not book another store's sales at its location."""
    square_till = await vendor_till(client, demo, "P3CCK6HSNDAS7")  # pay_order_bare.json's
    ours = (DATA / "square" / "pay_order_bare.json").read_bytes()
    # Square's published orders are in USD and the demo brand takes EUR: the order of the
    # integration's own store passes the store check and reaches intake, which refuses it.
    reached = await square_till.post(SQUARE, raw=ours)
    assert slug(reached) == "currency-mismatch", reached.text
    theirs = (DATA / "square" / "create_order_response.json").read_bytes()  # 057P5VYJ4A5X1
    refused = await square_till.post(SQUARE, raw=theirs)
    assert refused.status_code == 422 and slug(refused) == "vendor-store-mismatch"
    assert "057P5VYJ4A5X1" in refused.json()["detail"]
    assert await receipts_of(services, square_till) == 0

    envelope = (DATA / "loyverse" / "webhook_receipts_update.json").read_bytes()
    loyverse_till = await vendor_till(client, demo, "7a1837bb-c87a-4b93-92d6-397575a32f80")
    assert (await loyverse_till.post(LOYVERSE, raw=envelope)).status_code == 201
    other_store = (DATA / "loyverse" / "receipt_2_7336.json").read_bytes()
    refused = await loyverse_till.post(LOYVERSE, raw=other_store)
    assert refused.status_code == 422 and slug(refused) == "vendor-store-mismatch"
    assert await receipts_of(services, loyverse_till) == 1
    # An integration that names no store takes any (as before).
    assert (await (await new_till(client, demo)).post(LOYVERSE, raw=other_store)).status_code == 201

"""Guest profiles kept current as orders complete, against the real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from server.auth.notifier import RecordingNotifier
from tests.api.helpers import advance, menu_items, pay, place
from tests.conftest import Client, Demo, GuestHandle, sign_in

PROFILE_POINTS = (
    "SELECT visits_total, spend_total_minor, points_earned_12m, top_items FROM guest_profiles"
    " WHERE guest_id = $1"
)
PROFILE = (
    "SELECT visits_total, spend_total_minor, top_items, last_visit_at, weekday_counts,"
    " usual_weekday, usual_hour FROM guest_profiles WHERE guest_id = $1"
)


async def completed_order(
    client: Client, demo: Demo, guest: GuestHandle, *lines: tuple[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A paid pre-order of ``lines`` (item id, quantity) at the station, taken through to
    completed: the order as placed, and as completed."""
    body = {
        "location_id": str(demo.locations["station"]),
        "lines": [{"item_id": item_id, "quantity": quantity} for item_id, quantity in lines],
    }
    placed = await place(client, guest, body)
    assert placed.status_code == 201, placed.text
    order = placed.json()
    assert (await pay(client, guest, order["id"])).status_code == 200
    done = await advance(client, demo, order["id"], "accepted", "preparing", "ready", "completed")
    return order, done.json()


async def test_a_completed_order_folds_into_the_profile(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    items = await menu_items(client, demo.locations["station"])
    order, _ = await completed_order(client, demo, guest, (items["CRO"]["id"], 2))

    # Completion itself folded the visit into the profile (the orders hook).
    row = await services.db.fetchrow(PROFILE, guest.id)
    assert row["visits_total"] == 1
    assert row["spend_total_minor"] == order["amount_due_minor"]
    assert row["top_items"][0]["name"] == items["CRO"]["name"]
    assert row["top_items"][0]["count"] == 2
    assert sum(row["weekday_counts"]) == 1 and row["usual_hour"] is not None

    # A card scan now shows the visit, from the profile row alone.
    card = await client.post(
        "/v1/kiosk/scan",
        json={"code": guest.phone},
        headers={"Authorization": f"Bearer {demo.staff['barista']}"},
    )
    assert card.json()["habits"]["visits_total"] == 1
    assert card.json()["usual"][0]["name"] == items["CRO"]["name"]


async def test_a_refunded_line_is_counted_out_of_the_profile_once(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    items = await menu_items(client, demo.locations["station"])
    order, done = await completed_order(
        client, demo, guest, (items["CRO"]["id"], 2), (items["FLW"]["id"], 1)
    )
    croissants = next(line for line in done["lines"] if line["sku"] == "CRO")
    folded = await services.db.fetchrow(PROFILE_POINTS, guest.id)
    assert folded["spend_total_minor"] == order["amount_due_minor"]

    lead = {"Authorization": f"Bearer {demo.staff['shift_lead']}"}
    first, second = f"refund-{uuid.uuid4()}", f"refund-{uuid.uuid4()}"
    for key in (first, first, second):  # a retry, and the same lines again
        refunded = await client.post(
            f"/v1/orders/{order['id']}/refunds",
            json={"line_ids": [croissants["id"]]},
            headers={**lead, "Idempotency-Key": key},
        )
        assert refunded.status_code == 200, refunded.text

    row = await services.db.fetchrow(PROFILE_POINTS, guest.id)
    assert row["visits_total"] == 1  # the visit took place
    assert row["spend_total_minor"] == order["amount_due_minor"] - croissants["paid_minor"]
    assert row["points_earned_12m"] == folded["points_earned_12m"] - croissants["points_earned"]
    assert [entry["name"] for entry in row["top_items"]] == [items["FLW"]["name"]]


async def test_a_seeded_profile_starts_its_histograms_from_history(
    client: Client, demo: Demo, services: Any
) -> None:
    guest_id = await services.db.fetchrow(
        "SELECT id FROM guests WHERE card_number = '000000000002'"
    )
    guest_id = guest_id["id"]
    before = await services.db.fetchrow(PROFILE, guest_id)
    completed = await services.db.fetchrow(
        "SELECT count(*) AS n FROM orders WHERE guest_id = $1 AND status = 'completed'", guest_id
    )
    response = await client.post(
        f"/v1/guests/{guest_id}/accruals",
        json={
            "amount_paid_minor": 300,
            "location_id": str(demo.locations["mitte"]),
            "receipt_ref": f"seeded-{guest_id}",
        },
        headers={
            "Authorization": f"Bearer {demo.staff['barista']}",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 201, response.text
    after = await services.db.fetchrow(PROFILE, guest_id)
    assert after["visits_total"] == before["visits_total"] + 1
    assert sum(after["weekday_counts"]) == min(completed["n"], 500) + 1

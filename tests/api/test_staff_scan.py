"""The kiosk scan: one round trip from a QR code, card number or phone to the guest card."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from server.auth.notifier import RecordingNotifier
from server.seed.demo import PROGRAM
from shared import qr
from tests.api.helpers import menu_items, pay, place
from tests.api.staff_support import (
    audit_rows,
    bearer,
    guest_of_other_brand,
    other_brand,
    qr_of,
    staff_token,
)
from tests.conftest import Client, Demo, GuestHandle, give_points, sign_in


def slug(response: Any) -> str:
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def scan(client: Client, token: str, code: str, **extra: Any) -> Any:
    return await client.post("/v1/kiosk/scan", json={"code": code, **extra}, headers=bearer(token))


async def name_guest(services: Any, guest: GuestHandle, first: str, last: str) -> None:
    async with services.db.transaction() as conn:
        await conn.execute(
            "UPDATE guests SET first_name = $2, last_name = $3, email = $4 WHERE id = $1",
            guest.id,
            first,
            last,
            f"{first.lower()}@example.test",
        )


async def test_scan_by_qr_gives_the_card(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    await give_points(client, demo, guest, 300)
    response = await scan(client, demo.staff["barista"], await qr_of(services, guest.id))
    assert response.status_code == 200, response.text
    card = response.json()
    assert card["guest"]["id"] == str(guest.id)
    assert card["guest"]["tier"] == PROGRAM.tiers[0].name
    assert card["guest"]["next_tier"] == PROGRAM.tiers[1].name
    assert card["wallet"]["points_available"] == PROGRAM.welcome_bonus_points + 300
    assert card["wallet"]["points_pending"] == 0
    assert card["open_orders"] == []
    assert card["habits"]["visits_total"] == 0


async def test_scan_by_card_number_and_by_phone(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    card_number = await services.db.fetchrow(
        "SELECT card_number FROM guests WHERE id = $1", guest.id
    )
    spaced = " ".join(card_number["card_number"][i : i + 4] for i in (0, 4, 8))
    by_card = await scan(client, demo.staff["barista"], spaced)
    assert by_card.status_code == 200, by_card.text
    assert by_card.json()["guest"]["id"] == str(guest.id)
    # Typed by staff in national format: 0152 … for +49 152 …
    national = "0" + guest.phone.removeprefix("+49")
    by_phone = await scan(client, demo.staff["barista"], national)
    assert by_phone.status_code == 200, by_phone.text
    assert by_phone.json()["guest"]["id"] == str(guest.id)


async def test_a_regular_has_usual_habits_and_offers(client: Client, demo: Demo) -> None:
    # Demo guest 1 has six months of seeded history.
    response = await scan(client, demo.staff["barista"], "000000000001")
    assert response.status_code == 200, response.text
    card = response.json()
    assert card["guest"]["display_name"] == "Demo G."
    assert card["usual"] and card["usual"][0]["count"] >= card["usual"][-1]["count"]
    habits = card["habits"]
    assert habits["visits_total"] > 0 and habits["usual_weekday"] and habits["usual_time"]
    assert habits["usual_time"].endswith(":00")
    for offer in card["offers"]:
        assert offer["id"] and offer["title"] and offer["reason"]


async def test_bad_codes_each_have_their_own_problem(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    token = demo.staff["barista"]
    garbage = await scan(client, token, "hello, world")
    assert garbage.status_code == 422 and slug(garbage) == "unrecognised-code"
    malformed = await scan(client, token, "RG1:nonsense")
    assert malformed.status_code == 422 and slug(malformed) == "unrecognised-code"

    old = await qr_of(services, guest.id, now_s=time.time() - 3600)
    expired = await scan(client, token, old)
    assert expired.status_code == 422 and slug(expired) == "qr-expired"

    row = await services.db.fetchrow("SELECT public_id FROM guests WHERE id = $1", guest.id)
    forged_code = qr.generate(row["public_id"], b"not the guest's secret")
    forged = await scan(client, token, forged_code)
    assert forged.status_code == 422 and slug(forged) == "qr-forged"

    brand = await other_brand(services)
    their_qr, their_card = await guest_of_other_brand(services, brand.brand_id)
    for code in (their_qr, their_card):
        other = await scan(client, token, code)
        assert other.status_code == 404 and slug(other) == "guest-not-found"
    unknown = await scan(client, token, "+49 30 901820")
    assert unknown.status_code == 404 and slug(unknown) == "guest-not-found"


async def test_offline_replay_is_judged_by_scan_time(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    scanned = datetime.now(UTC) - timedelta(hours=3)
    code = await qr_of(services, guest.id, now_s=scanned.timestamp())
    token = demo.staff["barista"]
    late = await scan(client, token, code, scanned_at=scanned.isoformat())
    assert late.status_code == 200, late.text
    without = await scan(client, token, code)
    assert without.status_code == 422 and slug(without) == "qr-expired"
    too_old = datetime.now(UTC) - timedelta(days=2)
    stale = await scan(
        client,
        token,
        await qr_of(services, guest.id, now_s=too_old.timestamp()),
        scanned_at=too_old.isoformat(),
    )
    assert stale.status_code == 422 and slug(stale) == "invalid-scan-time"


async def test_barista_sees_a_masked_card_manager_the_full_one_audited(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    await name_guest(services, guest, "Anna", "Schmidt")
    code = await qr_of(services, guest.id)
    masked = (await scan(client, demo.staff["barista"], code)).json()["guest"]
    assert masked["display_name"] == "Anna S."
    assert masked["phone"] is None and masked["email"] is None
    assert await audit_rows(services, guest.id, "guest.view_full") == []
    assert len(await audit_rows(services, guest.id, "guest.scan")) == 1

    full = await scan(client, demo.staff["manager"], code)
    assert full.status_code == 200, full.text
    shown = full.json()["guest"]
    assert shown["display_name"] == "Anna Schmidt"
    assert shown["phone"] == guest.phone and shown["email"] == "anna@example.test"
    rows = await audit_rows(services, guest.id, "guest.view_full")
    assert len(rows) == 1 and rows[0]["actor_id"] == demo.manager_id


async def test_open_orders_only_at_the_staff_location(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    station = demo.locations["station"]
    items = await menu_items(client, station)
    body = {"location_id": str(station), "lines": [{"item_id": items["CRO"]["id"], "quantity": 1}]}
    order = (await place(client, guest, body)).json()
    assert (await pay(client, guest, order["id"])).status_code == 200
    code = await qr_of(services, guest.id)

    at_station = await scan(client, demo.staff["barista"], code)  # mitte and station
    assert [o["id"] for o in at_station.json()["open_orders"]] == [order["id"]]
    mitte_only = staff_token(services, demo, "barista", {demo.locations["mitte"]})
    elsewhere = await scan(client, mitte_only, code)
    assert elsewhere.status_code == 200
    assert elsewhere.json()["open_orders"] == []


async def test_scans_are_rate_limited_per_staff(
    client: Client, notifier: RecordingNotifier, demo: Demo, services: Any
) -> None:
    guest = await sign_in(client, notifier)
    staff_id = uuid.uuid4()
    token = staff_token(services, demo, "barista", {demo.locations["mitte"]}, staff_id)
    limit = services.settings.scans_per_minute
    await services.gate.client.set(f"rg:limit:scans:{staff_id}", limit, ex=120)
    response = await scan(client, token, await qr_of(services, guest.id))
    assert response.status_code == 429 and slug(response) == "too-many-scans"
    assert int(response.headers["retry-after"]) > 0


async def test_enrol_at_the_counter(client: Client, demo: Demo, services: Any) -> None:
    from tests.conftest import new_phone

    phone = new_phone()
    key = str(uuid.uuid4())
    body = {"phone": phone, "first_name": "Lena"}
    token = demo.staff["barista"]
    created = await client.post("/v1/kiosk/guests", json=body, headers=bearer(token, key))
    assert created.status_code == 201, created.text
    card = created.json()
    assert card["guest"]["display_name"] == "Lena"
    assert card["wallet"]["points_available"] == PROGRAM.welcome_bonus_points
    guest_id = uuid.UUID(card["guest"]["id"])
    hot = await services.loyalty.hot.read(guest_id)
    assert hot is not None and hot[0].spendable == PROGRAM.welcome_bonus_points
    replay = await client.post("/v1/kiosk/guests", json=body, headers=bearer(token, key))
    assert replay.status_code == 201 and replay.content == created.content
    again = await client.post(
        "/v1/kiosk/guests", json=body, headers=bearer(token, str(uuid.uuid4()))
    )
    assert again.status_code == 200 and again.json()["guest"]["id"] == str(guest_id)
    assert len(await audit_rows(services, guest_id, "guest.enrol")) == 1
    missing_key = await client.post("/v1/kiosk/guests", json=body, headers=bearer(token))
    assert missing_key.status_code == 400

"""Bad input gets a 4xx problem with its own type, and writes nothing."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from server.auth.notifier import RecordingNotifier
from server.infra.identity import Principal
from server.seed.demo import PROGRAM
from tests.api.helpers import ledger_state, menu_items, place
from tests.conftest import Client, Demo, GuestHandle, new_phone, sign_in, tokens

WELCOME = PROGRAM.welcome_bonus_points


@pytest.fixture
async def items(client: Client, demo: Demo) -> dict[str, dict[str, Any]]:
    return await menu_items(client, demo.locations["station"])


def body(demo: Demo, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    line = {"item_id": item["id"], "quantity": extra.pop("quantity", 1)}
    return {"location_id": str(demo.locations["station"]), "lines": [line], **extra}


async def refused(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/" + slug), problem
    assert problem["detail"]
    return problem  # type: ignore[no-any-return]


async def orders_of(services: Any, guest: GuestHandle) -> int:
    async with services.db.connection() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM orders WHERE guest_id = $1", guest.id))


async def test_unknown_item(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    await refused(
        await place(client, guest, body(demo, {"id": str(uuid.uuid4())})), 422, "unknown-item"
    )
    assert await orders_of(services, guest) == 0


@pytest.mark.parametrize("quantity", [0, 10_000, -1])
async def test_quantity_out_of_range(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, quantity: int
) -> None:
    problem = await refused(
        await place(client, guest, body(demo, items["CRO"], quantity=quantity)),
        422,
        "invalid-quantity",
    )
    assert "lines[0].quantity" in problem["detail"]


async def test_client_prices_are_ignored(
    client: Client, guest: GuestHandle, demo: Demo, items: Any
) -> None:
    sent = body(demo, items["CRO"], quantity=2)
    sent["lines"][0]["price_minor"] = 1
    sent["subtotal_minor"] = 2
    response = await place(client, guest, sent)
    assert response.status_code == 201
    assert response.json()["subtotal_minor"] == 2 * items["CRO"]["price_minor"]


async def test_points_over_the_cap(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    cap = items["CRO"]["price_minor"] * PROGRAM.max_points_share_pct // 100
    problem = await refused(
        await place(client, guest, body(demo, items["CRO"], points_to_spend=cap + 1)),
        422,
        "points-over-cap",
    )
    assert problem["max_points"] == cap
    assert await ledger_state(services, guest.id) == (WELCOME, 0)


async def test_points_over_the_balance(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    await refused(
        await place(client, guest, body(demo, items["GC50"], points_to_spend=WELCOME + 1)),
        422,
        "insufficient-points",
    )
    assert await ledger_state(services, guest.id) == (WELCOME, 0)
    assert await orders_of(services, guest) == 0


async def test_closed_location(client: Client, guest: GuestHandle, demo: Demo) -> None:
    items = await menu_items(client, demo.locations["mitte"])
    night = (datetime.now(ZoneInfo("Europe/Berlin")) + timedelta(days=1)).replace(
        hour=3, minute=0, second=0, microsecond=0
    )
    sent = {
        "location_id": str(demo.locations["mitte"]),
        "lines": [{"item_id": items["CRO"]["id"], "quantity": 1}],
        "pickup_at": night.isoformat(),
    }
    await refused(await place(client, guest, sent), 422, "location-closed")


async def test_full_slot(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    # Slots are shared by every test at the station: take one 12 days ahead, where no other
    # test orders (the Locust smoke spreads its pickups over 48 h and once drew this slot
    # when it was 2 days ahead), and free it again afterwards.
    pickup = (datetime.now(UTC) + timedelta(days=12)).replace(second=0, microsecond=0)
    pickup = pickup.replace(minute=pickup.minute - pickup.minute % 5)
    station = demo.locations["station"]
    async with services.db.transaction() as conn:
        await conn.execute(
            "INSERT INTO slot_counts (location_id, slot_start, orders) VALUES ($1, $2, 500)"
            " ON CONFLICT (location_id, slot_start) DO UPDATE SET orders = 500",
            station,
            pickup,
        )
    try:
        sent = body(demo, items["CRO"], pickup_at=pickup.isoformat(), points_to_spend=10)
        await refused(await place(client, guest, sent), 409, "slot-full")
        assert await ledger_state(services, guest.id) == (WELCOME, 0)
        assert await orders_of(services, guest) == 0
    finally:
        async with services.db.transaction() as conn:
            await conn.execute(
                "DELETE FROM slot_counts WHERE location_id = $1 AND slot_start = $2",
                station,
                pickup,
            )


async def test_pickup_too_soon(client: Client, guest: GuestHandle, demo: Demo, items: Any) -> None:
    sent = body(demo, items["CRO"], pickup_at=datetime.now(UTC).isoformat())
    await refused(await place(client, guest, sent), 422, "pickup-too-soon")


async def test_expired_and_unknown_promo_codes(
    client: Client, guest: GuestHandle, demo: Demo, items: Any
) -> None:
    await refused(
        await place(client, guest, body(demo, items["CRO"], promo_code="SUMMER24")),
        422,
        "promo-expired",
    )
    await refused(
        await place(client, guest, body(demo, items["CRO"], promo_code="NOPE")),
        422,
        "unknown-promo-code",
    )


async def test_promo_discounts_and_per_guest_limit(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    first = await place(client, guest, body(demo, items["AVO"], promo_code="welcome10"))
    assert first.status_code == 201
    assert first.json()["discount_minor"] == items["AVO"]["price_minor"] // 10
    await refused(
        await place(client, guest, body(demo, items["AVO"], promo_code="WELCOME10")),
        422,
        "promo-exhausted",
    )
    assert await orders_of(services, guest) == 1


async def test_malformed_json(client: Client, guest: GuestHandle) -> None:
    response = await client.post(
        "/v1/orders",
        content=b'{"lines": [',
        headers={**guest.headers, "Idempotency-Key": "k", "content-type": "application/json"},
    )
    await refused(response, 400, "malformed-json")


async def test_wrong_types_name_the_field(
    client: Client, guest: GuestHandle, demo: Demo, items: Any
) -> None:
    sent = body(demo, items["CRO"])
    sent["lines"][0]["quantity"] = "two"
    problem = await refused(await place(client, guest, sent), 422, "validation-error")
    assert "lines[0].quantity" in problem["detail"]


async def test_missing_idempotency_key(
    client: Client, guest: GuestHandle, demo: Demo, items: Any
) -> None:
    response = await client.post("/v1/orders", json=body(demo, items["CRO"]), headers=guest.headers)
    await refused(response, 400, "idempotency-key-required")


async def test_no_token_and_bad_token(client: Client, demo: Demo, items: Any) -> None:
    await refused(await client.get("/v1/me"), 401, "unauthenticated")
    await refused(
        await client.get("/v1/me", headers={"Authorization": "Bearer nope"}), 401, "invalid-token"
    )
    staff = {"Authorization": f"Bearer {demo.staff['barista']}", "Idempotency-Key": "x"}
    await refused(
        await client.post("/v1/orders", json=body(demo, items["CRO"]), headers=staff),
        403,
        "guests-only",
    )


async def test_bad_phone(client: Client) -> None:
    problem = await refused(
        await client.post("/v1/auth/otp", json={"phone": "+49 123"}), 422, "invalid-phone"
    )
    assert "+49 123" in problem["detail"]


async def test_unknown_location(client: Client) -> None:
    await refused(await client.get(f"/v1/locations/{uuid.uuid4()}/menu"), 404, "location-not-found")


async def test_a_nul_character_is_refused_and_the_sign_in_code_still_works(
    client: Client, notifier: RecordingNotifier
) -> None:
    """PostgreSQL cannot store U+0000. The refusal writes nothing, and the one-time code the
    refused request had claimed is given back, so the guest can send it again."""
    phone = new_phone()
    assert (await client.post("/v1/auth/otp", json={"phone": phone})).status_code == 202
    code = notifier.codes[phone]
    verify = {"phone": phone, "code": code, "first_name": "A\u0000B"}
    problem = await refused(
        await client.post("/v1/auth/otp/verify", json=verify), 422, "invalid-text"
    )
    assert "NUL" in problem["detail"]
    verify["first_name"] = "Ada"
    signed_in = await client.post("/v1/auth/otp/verify", json=verify)
    assert signed_in.status_code == 200, signed_in.text
    staff = {"email": "barista@demo.regulars.test\u0000", "password": "x"}
    await refused(await client.post("/v1/auth/staff", json=staff), 422, "invalid-text")


async def test_dates_at_the_edge_of_the_calendar_are_refused(
    client: Client, guest: GuestHandle, demo: Demo, items: Any, services: Any
) -> None:
    for edge in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        await refused(
            await place(client, guest, body(demo, items["CRO"], pickup_at=edge)),
            422,
            "invalid-pickup-time",  # no UTC time is that far: out of range, not too far ahead
        )
        await refused(
            await client.get("/v1/me/orders", params={"before": edge}, headers=guest.headers),
            422,
            "invalid-before",
        )
    assert await orders_of(services, guest) == 0
    await refused(
        await client.get("/v1/me/orders?before=2026-01-01T00:00:00", headers=guest.headers),
        422,
        "invalid-before",
    )
    station = demo.locations["station"]  # Berlin, never closes
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime.now(berlin)
    today = await client.get(f"/v1/locations/{station}/slots")
    after = datetime.now(berlin)
    # The location's today, not UTC's: from 23:00 UTC (in winter) those are different days.
    assert today.status_code == 200
    assert today.json()["date"] in {before.date().isoformat(), after.date().isoformat()}
    if after.date() == before.date() and after.hour < 23:  # later, the lead time may pass midnight
        assert today.json()["slots"]
    yesterday = before.date() - timedelta(days=1)
    too_far = before.date() + timedelta(days=60)
    for day in ("0001-01-01", "9999-12-31", str(too_far), str(yesterday)):
        await refused(
            await client.get(f"/v1/locations/{station}/slots?date={day}"), 422, "date-out-of-range"
        )


async def test_a_cursor_with_a_huge_number_is_refused(client: Client, guest: GuestHandle) -> None:
    cursor = f"99999999999999999999_{uuid.uuid4()}"
    await refused(
        await client.get("/v1/me/ledger", params={"cursor": cursor}, headers=guest.headers),
        422,
        "invalid-cursor",
    )


async def test_a_body_that_is_not_utf8_or_nested_too_deep_is_malformed(client: Client) -> None:
    headers = {"Content-Type": "application/json"}
    not_utf8 = await client.post("/v1/auth/otp", content=b'{"phone":"\xff"}', headers=headers)
    problem = await refused(not_utf8, 400, "malformed-json")
    assert "UTF-8" in problem["detail"]
    deep = '{"phone":"+4915100000001","x":' + "[" * 1000 + "]" * 1000 + "}"
    await refused(
        await client.post("/v1/auth/otp", content=deep, headers=headers), 400, "malformed-json"
    )


async def test_public_routes_serve_a_request_whose_access_token_has_expired(
    client: Client, notifier: RecordingNotifier
) -> None:
    """Clients often send their access token on every call; once it has expired, refreshing
    it must still work. Routes that need a user say why the token was refused."""
    guest = await sign_in(client, notifier)
    principal = Principal(kind="guest", subject_id=guest.id, brand_id=uuid.uuid4())
    expired = {"Authorization": f"Bearer {tokens().issue(principal, now_s=time.time() - 3600)}"}
    assert (await client.get("/v1/locations", headers=expired)).status_code == 200
    sent = await client.post("/v1/auth/otp", json={"phone": new_phone()}, headers=expired)
    assert sent.status_code == 202
    problem = await refused(await client.get("/v1/me", headers=expired), 401, "invalid-token")
    assert "expired" in problem["detail"]

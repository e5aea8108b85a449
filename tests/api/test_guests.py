"""Guest sign-in, refresh rotation, the QR code, profile pages and manager adjustments."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import msgspec
import pytest

from server.app import create_app
from server.auth.notifier import RecordingNotifier
from server.lifespan import lifespan
from server.seed.demo import PROGRAM
from shared import qr
from tests.api.helpers import menu_items, order_body, place, spendable
from tests.conftest import Client, Demo, GuestHandle, new_phone, sign_in


async def test_phone_is_normalised_and_the_same_guest_signs_in_again(
    client: Client, notifier: RecordingNotifier
) -> None:
    phone = new_phone()
    national = "0" + phone[3:]  # the same number as typed in Germany
    first = await sign_in(client, notifier, phone)
    again = await sign_in(client, notifier, national)
    assert first.id == again.id and again.phone == phone


async def test_codes_are_single_use_and_attempts_are_limited(
    client: Client, notifier: RecordingNotifier, settings: Any
) -> None:
    phone = new_phone()
    await client.post("/v1/auth/otp", json={"phone": phone})
    code = notifier.codes[phone]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(settings.otp_max_attempts):
        response = await client.post("/v1/auth/otp/verify", json={"phone": phone, "code": wrong})
        assert response.status_code == 401 and response.json()["type"].endswith("/wrong-code")
    locked = await client.post("/v1/auth/otp/verify", json={"phone": phone, "code": code})
    assert locked.status_code == 429 and locked.json()["type"].endswith("/too-many-attempts")
    # A new code works once, and only once.
    await client.post("/v1/auth/otp", json={"phone": phone})
    good = {"phone": phone, "code": notifier.codes[phone]}
    assert (await client.post("/v1/auth/otp/verify", json=good)).status_code == 200
    reused = await client.post("/v1/auth/otp/verify", json=good)
    assert reused.status_code == 401 and reused.json()["type"].endswith("/code-expired")


async def test_a_refused_send_writes_no_code_so_guesses_stay_limited(
    settings: Any, notifier: RecordingNotifier
) -> None:
    """At most otp_sends_per_hour codes, each with otp_max_attempts guesses: a send refused
    with 429 used to write a fresh code all the same, with its attempts back at 0, which
    gave unlimited guesses at a guest's sign-in."""
    strict = msgspec.structs.replace(settings, otp_sends_per_hour=2)
    app = create_app(strict, notifier=notifier)
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with Client(transport=transport, base_url="http://testserver") as client:
            phone = new_phone()
            for _ in range(2):
                assert (await client.post("/v1/auth/otp", json={"phone": phone})).status_code == 202
            code = notifier.codes[phone]
            wrong = {"phone": phone, "code": "000000" if code != "000000" else "111111"}
            for _ in range(strict.otp_max_attempts):
                assert (await client.post("/v1/auth/otp/verify", json=wrong)).status_code == 401
            refused = await client.post("/v1/auth/otp", json={"phone": phone})
            assert refused.status_code == 429, refused.text
            # No code is waiting: guessing is over until the hour has passed.
            guess = await client.post("/v1/auth/otp/verify", json=wrong)
            assert guess.status_code in (401, 429), guess.text
            assert not guess.json()["type"].endswith("/wrong-code"), guess.text


async def test_refresh_rotates_and_reuse_revokes_the_family(
    client: Client, notifier: RecordingNotifier
) -> None:
    phone = new_phone()
    await client.post("/v1/auth/otp", json={"phone": phone})
    pair = (
        await client.post(
            "/v1/auth/otp/verify", json={"phone": phone, "code": notifier.codes[phone]}
        )
    ).json()
    rotated = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200
    newer = rotated.json()
    assert newer["refresh_token"] != pair["refresh_token"]
    assert (
        await client.get("/v1/me", headers={"Authorization": f"Bearer {newer['access_token']}"})
    ).status_code == 200
    stolen = await client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert stolen.status_code == 401 and stolen.json()["type"].endswith("/refresh-token-reused")
    # The whole family is signed out, including the token handed out by the rotation.
    revoked = await client.post("/v1/auth/refresh", json={"refresh_token": newer["refresh_token"]})
    assert revoked.status_code == 401 and revoked.json()["type"].endswith("/invalid-refresh-token")


async def test_qr_code_verifies_with_the_guests_secret(
    client: Client, guest: GuestHandle, services: Any
) -> None:
    response = await client.get("/v1/me/qr", headers=guest.headers)
    assert response.status_code == 200
    body = response.json()
    async with services.db.connection() as conn:
        row = await conn.fetchrow("SELECT public_id, qr_secret FROM guests WHERE id = $1", guest.id)
    scanned = qr.parse(body["code"])
    assert scanned.public_id == row["public_id"]
    qr.verify(scanned, bytes(row["qr_secret"]))
    assert body["secret_ttl_s"] == 300
    png = await client.get("/v1/me/qr", headers={**guest.headers, "Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")


async def test_profile_orders_and_paged_ledger(
    client: Client, guest: GuestHandle, demo: Demo
) -> None:
    me = (await client.get("/v1/me", headers=guest.headers)).json()
    assert (
        me["id"] == str(guest.id)
        and me["tier"] == PROGRAM.tiers[0].name
        and me["phone"] == guest.phone
    )
    items = await menu_items(client, demo.locations["station"])
    for _ in range(3):
        body = order_body(demo, items, ("ESP", 1), points=5)
        assert (await place(client, guest, body)).status_code == 201
    orders = (await client.get("/v1/me/orders?limit=2", headers=guest.headers)).json()
    assert len(orders) == 2 and orders[0]["created_at"] >= orders[1]["created_at"]
    first = (await client.get("/v1/me/ledger?limit=2", headers=guest.headers)).json()
    second = (
        await client.get(
            f"/v1/me/ledger?limit=2&cursor={first['next_cursor']}", headers=guest.headers
        )
    ).json()
    entries = first["entries"] + second["entries"]
    assert [e["code"] for e in entries] == ["spend", "spend", "spend", "welcome"]
    assert {e["state"] for e in entries[:3]} == {"pending"} and second["next_cursor"] is None
    bad = await client.get("/v1/me/ledger?cursor=garbage", headers=guest.headers)
    assert bad.status_code == 422 and bad.json()["type"].endswith("/invalid-cursor")


async def test_adjustments_need_a_manager_and_are_audited(
    client: Client, guest: GuestHandle, demo: Demo, services: Any
) -> None:
    body = {"points": 250, "reason": "coffee machine ate the order"}
    barista = await client.post(
        f"/v1/guests/{guest.id}/adjustments",
        json=body,
        headers={"Authorization": f"Bearer {demo.staff['barista']}", "Idempotency-Key": "a"},
    )
    assert barista.status_code == 403
    manager = {
        "Authorization": f"Bearer {demo.staff['manager']}",
        "Idempotency-Key": str(uuid.uuid4()),
    }
    done = await client.post(f"/v1/guests/{guest.id}/adjustments", json=body, headers=manager)
    replay = await client.post(f"/v1/guests/{guest.id}/adjustments", json=body, headers=manager)
    assert done.status_code == replay.status_code == 201 and done.content == replay.content
    assert await spendable(client, guest) == PROGRAM.welcome_bonus_points + 250
    too_much = await client.post(
        f"/v1/guests/{guest.id}/adjustments",
        json={"points": -10_000, "reason": "typo"},
        headers={**manager, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert too_much.status_code == 422 and too_much.json()["type"].endswith("/insufficient-points")
    async with services.db.connection() as conn:
        audit = await conn.fetch(
            "SELECT actor_id, action, detail FROM audit_log WHERE guest_id = $1", guest.id
        )
    assert [(a["actor_id"], a["action"], a["detail"]["points"]) for a in audit] == [
        (demo.manager_id, "points.adjust", 250)
    ]


async def test_concurrent_sign_ins_make_one_guest(
    client: Client, notifier: RecordingNotifier, services: Any
) -> None:
    phone = new_phone()
    await client.post("/v1/auth/otp", json={"phone": phone})
    code = notifier.codes[phone]
    # Two devices verify the same code at once: one wins, the other is told the code is gone.
    responses = await asyncio.gather(
        *(client.post("/v1/auth/otp/verify", json={"phone": phone, "code": code}) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [200, 401]
    async with services.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM guests WHERE phone_e164 = $1", phone) == 1


@pytest.mark.parametrize("points", [0, 2_000_000])
async def test_adjustment_bounds(
    client: Client, guest: GuestHandle, demo: Demo, points: int
) -> None:
    response = await client.post(
        f"/v1/guests/{guest.id}/adjustments",
        json={"points": points, "reason": "x"},
        headers={
            "Authorization": f"Bearer {demo.staff['manager']}",
            "Idempotency-Key": str(uuid.uuid4()),
        },
    )
    assert response.status_code == 422
